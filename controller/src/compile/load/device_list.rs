//! A fast path for the one part of a fleet that is big: the `spec.devices` list of a
//! DeviceSet (a million devices are a hundred megabytes of YAML).
//!
//! General YAML parsing allocates an event per scalar and runs at tens of megabytes per
//! second. Device lists, though, are almost always written in one plain shape:
//!
//! ```yaml
//!   devices:
//!     - id: store-0001
//!       publicKey: iPYFee4OsDHgQgXiB3P6JUgFLVw1jzpulXcZVzjLTV0=
//!       labels: {tier: canary}
//! ```
//!
//! This module reads exactly that shape — block entries or one-line flow entries, keys
//! `id`, `publicKey`, `labels`, `pin`, plain or simply quoted scalars, comments — and
//! answers `None` for anything else (anchors, tags, escapes, multi-line scalars, block
//! scalars, unknown or repeated keys, null-like values, tabs, CR). The caller then parses
//! the document with the general parser, which also produces the error messages, so the
//! fast path never changes what a document means; it only makes the common case quick.
//! The rest of the document (everything but the list) always goes through the general
//! parser.

use crate::model::{DeviceSetEntry, Labels};

/// The `spec.devices` block of a DeviceSet document, read by the fast path.
pub(super) struct DeviceList {
    /// Byte range of the `devices:` line and its entries in the document text.
    pub(super) range: std::ops::Range<usize>,
    /// The entries, in order.
    pub(super) entries: Vec<DeviceSetEntry>,
}

/// One line of the document: its byte range, indentation and content (without the
/// line break).
#[derive(Clone, Copy)]
struct Line<'a> {
    start: usize,
    end: usize,
    indent: usize,
    content: &'a str,
}

impl Line<'_> {
    /// Blank or comment-only lines carry no YAML content.
    fn is_blank(&self) -> bool {
        self.content.is_empty() || self.content.starts_with('#')
    }
}

fn lines(text: &str) -> impl Iterator<Item = Line<'_>> {
    let mut offset = 0;
    text.split_inclusive('\n').map(move |raw| {
        let start = offset;
        offset += raw.len();
        let line = raw.strip_suffix('\n').unwrap_or(raw);
        let content = line.trim_start_matches(' ');
        Line {
            start,
            end: offset,
            indent: line.len() - content.len(),
            content: content.trim_end_matches(' '),
        }
    })
}

/// Finds and reads the `spec.devices` block list of a DeviceSet document. `None` when
/// the document has no such list or it is not in the shape this module reads.
pub(super) fn read(text: &str) -> Option<DeviceList> {
    if text.contains(['\t', '\r']) {
        return None;
    }
    // One pass over the lines, nothing collected: a device list is millions of lines.
    let mut lines = lines(text).filter(|l| !l.is_blank()).peekable();
    // The top-level `spec:` line, then `devices:` at spec's child indentation.
    lines.find(|l| l.indent == 0 && without_comment(l.content) == Some("spec:"))?;
    let children = lines.peek()?.indent;
    if children == 0 {
        return None;
    }
    let devices = lines.find(|l| l.indent <= children && (l.indent == 0 || is_devices_key(l)))?;
    if devices.indent != children || without_comment(devices.content) != Some("devices:") {
        return None;
    }
    let item_indent = lines.peek()?.indent;
    if item_indent < children || !lines.peek()?.content.starts_with("- ") {
        return None;
    }

    let mut entries = Vec::new();
    let mut current: Option<EntryBuilder> = None;
    let mut end = devices.end;
    while let Some(&line) = lines.peek() {
        if line.indent < item_indent || (line.indent == item_indent && !line.content.starts_with('-')) {
            break;
        }
        lines.next();
        end = if line.indent == item_indent {
            let item = line.content.strip_prefix("- ")?.trim_start_matches(' ');
            if let Some(done) = current.take() {
                entries.push(done.build()?);
            }
            let entry = current.insert(EntryBuilder::default());
            if item.starts_with('{') {
                entry.flow(item)?;
                line.end
            } else if line.content.len() - item.len() == 2 {
                // The first key of a block entry sits two columns in, as the others do.
                entry.field(item, &mut lines, item_indent + 2)?.unwrap_or(line.end)
            } else {
                return None;
            }
        } else if line.indent == item_indent + 2 {
            current.as_mut()?.field(line.content, &mut lines, item_indent + 2)?.unwrap_or(line.end)
        } else {
            return None;
        };
    }
    if let Some(done) = current.take() {
        entries.push(done.build()?);
    }
    // A second `devices` key is an error the general parser reports.
    if lines.take_while(|l| l.indent > 0).any(|l| l.indent == children && is_devices_key(&l)) {
        return None;
    }
    Some(DeviceList { range: devices.start..end, entries })
}

fn is_devices_key(line: &Line<'_>) -> bool {
    line.content.strip_prefix("devices").is_some_and(|rest| rest.starts_with(':'))
}

/// The fields of one entry as they are read.
#[derive(Default)]
struct EntryBuilder {
    id: Option<String>,
    public_key: Option<String>,
    labels: Option<Labels>,
    pin: Option<String>,
}

impl EntryBuilder {
    fn build(self) -> Option<DeviceSetEntry> {
        Some(DeviceSetEntry {
            id: self.id?,
            public_key: self.public_key,
            labels: self.labels.unwrap_or_default(),
            pin: self.pin,
        })
    }

    /// Sets one field, refusing repeated and unknown keys (the general parser reports
    /// those).
    fn set(&mut self, key: &str, value: Value<'_>) -> Option<()> {
        match (key, value) {
            ("id", Value::Scalar(v)) if self.id.is_none() => self.id = Some(v.to_owned()),
            ("publicKey", Value::Scalar(v)) if self.public_key.is_none() && !is_null(v) => {
                self.public_key = Some(v.to_owned())
            }
            ("pin", Value::Scalar(v)) if self.pin.is_none() && !is_null(v) => self.pin = Some(v.to_owned()),
            ("labels", Value::Map(map)) if self.labels.is_none() => self.labels = Some(map),
            _ => return None,
        }
        Some(())
    }

    /// Reads `key: value` from `content`; a `labels:` with no value continues with a
    /// block map on the following, deeper lines, which it consumes. Returns the end of the
    /// last line it consumed, if any.
    fn field<'a>(
        &mut self,
        content: &str,
        lines: &mut std::iter::Peekable<impl Iterator<Item = Line<'a>>>,
        key_indent: usize,
    ) -> Option<Option<usize>> {
        let (key, value) = split_key(content)?;
        if !value.is_empty() {
            let value = if value.starts_with('{') {
                Value::Map(flow_map(value)?)
            } else {
                Value::Scalar(scalar(value, false)?)
            };
            self.set(key, value)?;
            return Some(None);
        }
        if key != "labels" {
            return None;
        }
        let mut labels = Labels::new();
        let mut end = None;
        let map_indent = lines.peek()?.indent;
        if map_indent <= key_indent {
            // `labels:` followed by nothing is null, which the general parser judges.
            return None;
        }
        while let Some(line) = lines.next_if(|l| l.indent > key_indent) {
            if line.indent != map_indent {
                return None;
            }
            let (k, v) = split_key(line.content)?;
            insert_label(&mut labels, k, scalar(v, false)?)?;
            end = Some(line.end);
        }
        self.set("labels", Value::Map(labels))?;
        Some(end)
    }

    /// Reads a one-line flow entry `{id: a, publicKey: b, pin: c}`.
    fn flow(&mut self, text: &str) -> Option<()> {
        for (key, value) in flow_pairs(text)? {
            self.set(key, Value::Scalar(value))?;
        }
        Some(())
    }
}

enum Value<'a> {
    Scalar(&'a str),
    Map(Labels),
}

/// YAML's null spellings: an optional field with such a value is absent, which the
/// general parser decides.
fn is_null(value: &str) -> bool {
    matches!(value, "~" | "null" | "Null" | "NULL")
}

fn insert_label(labels: &mut Labels, key: &str, value: &str) -> Option<()> {
    if !is_plain(key, true) || labels.insert(key.to_owned(), value.to_owned()).is_some() {
        return None;
    }
    Some(())
}

/// `key: value` or `key:` with a plain key.
fn split_key(content: &str) -> Option<(&str, &str)> {
    let content = without_comment(content)?;
    let (key, value) = match content.split_once(": ") {
        Some((key, value)) => (key, value.trim_start_matches(' ')),
        None => (content.strip_suffix(':')?, ""),
    };
    is_plain(key, true).then_some((key, value))
}

/// `content` without a trailing `# comment`, or `None` when a `#` could belong to a
/// scalar in a way this module does not judge.
fn without_comment(content: &str) -> Option<&str> {
    match content.find('#') {
        None => Some(content),
        // A comment starts at `#` after a space; `#` inside a plain scalar does not.
        Some(at) if at > 0 && content.as_bytes()[at - 1] == b' ' => {
            let before = content[..at].trim_end_matches(' ');
            // Quotes before the comment could hold the `#`: leave those to the parser.
            (!before.contains(['"', '\''])).then_some(before)
        }
        Some(_) => (!content.contains(" #")).then_some(content),
    }
}

/// A scalar value: plain, or quoted without escapes. `in_flow` adds the characters that
/// end a scalar inside `{...}`.
fn scalar(value: &str, in_flow: bool) -> Option<&str> {
    for quote in ['"', '\''] {
        if let Some(inner) = value.strip_prefix(quote) {
            let inner = inner.strip_suffix(quote)?;
            let special = inner.contains([quote, '\\']) || (in_flow && inner.contains([',', '{', '}']));
            return (!special).then_some(inner);
        }
    }
    is_plain(value, in_flow).then_some(value)
}

/// A plain scalar this module reads as its own text: no indicator first, no `: `, no
/// ` #`, no trailing `:`; inside flow collections no `,[]{}` either.
fn is_plain(s: &str, in_flow: bool) -> bool {
    let Some(first) = s.chars().next() else { return false };
    let special = "-?:,[]{}#&*!|>'\"%@`".contains(first)
        || s.contains(": ")
        || s.contains(" #")
        || s.ends_with(':')
        || (in_flow && s.contains([',', '[', ']', '{', '}']));
    !special
}

/// `{k: v, k2: v2}` on one line, with scalar values.
fn flow_pairs(text: &str) -> Option<Vec<(&str, &str)>> {
    let text = without_comment(text)?;
    let inner = text.strip_prefix('{')?.strip_suffix('}')?.trim_matches(' ');
    if inner.is_empty() {
        return Some(Vec::new());
    }
    inner
        .split(',')
        .map(|pair| {
            let (key, value) = pair.trim_matches(' ').split_once(": ")?;
            is_plain(key, true).then_some(())?;
            Some((key, scalar(value.trim_matches(' '), true)?))
        })
        .collect()
}

fn flow_map(text: &str) -> Option<Labels> {
    let mut labels = Labels::new();
    for (key, value) in flow_pairs(text)? {
        insert_label(&mut labels, key, value)?;
    }
    Some(labels)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::DeviceSet;

    const HEAD: &str =
        "apiVersion: waveguide.dev/v1alpha1\nkind: DeviceSet\nmetadata:\n  name: s\nspec:\n  group: g\n";

    /// The fast path reads `devices` exactly as serde_yaml does, and the rest of the
    /// document is unaffected by cutting the list out.
    fn assert_same(doc: &str) {
        let list = read(doc).unwrap_or_else(|| panic!("fast path refused:\n{doc}"));
        let expected: DeviceSet = serde_yaml::from_str(doc).unwrap();
        assert_eq!(list.entries, expected.spec.devices, "{doc}");
        let rest = format!("{}{}", &doc[..list.range.start], &doc[list.range.end..]);
        let without: DeviceSet = serde_yaml::from_str(&rest).unwrap();
        assert!(without.spec.devices.is_empty());
        assert_eq!(without.spec.labels, expected.spec.labels);
        assert_eq!(without.spec.pin, expected.spec.pin);
    }

    #[test]
    fn reads_the_common_shapes() {
        assert_same(&format!(
            "{HEAD}  labels:\n    hw: rpi4\n  devices:\n    - id: site-00064-d0671688\n      publicKey: iPYFee4OsDHgQgXiB3P6JUgFLVw1jzpulXcZVzjLTV0=\n    - id: site-00064-d0671689\n      publicKey: bpLTkCzbM8BdjI172q/YU0fAj30pqDFYsIAvT+v2co4=\n      labels: {{hw: x86}}\n"
        ));
        // Indentless list, comments, quotes, block labels, flow entries, a pin, keys
        // after the list.
        assert_same(&format!(
            "{HEAD}  devices:\n  # canaries first\n  - id: \"007\"\n    labels:\n      tier: canary\n      example.com/rack: 'r-12'\n\n  - {{id: a.b_c-1, pin: edge-os-2-0-0}}\n  - id: 0x10\n    pin: v1 # pinned\n  - {{id: last}}\n  pin: edge-os-1-5-0\n"
        ));
        assert_same(&format!("{HEAD}  devices:\n    - id: only\n"));
    }

    #[test]
    fn refuses_what_it_does_not_judge() {
        let refused = [
            "  devices:\n    - id: &a x\n",
            "  devices:\n    - id: !!str x\n",
            "  devices:\n    - id: \"a\\tb\"\n",
            "  devices:\n    - id: a\n      b\n",
            "  devices:\n    - id: |\n        a\n",
            "  devices:\n    - id: a\n      colour: red\n",
            "  devices:\n    - id: a\n      id: b\n",
            "  devices:\n    - id: a\n      pin: null\n",
            "  devices:\n    - id: a\n      pin: ~\n",
            "  devices:\n    - id: a\n      labels:\n",
            "  devices:\n    - id: a\n      labels: {k: v, k: w}\n",
            "  devices:\n    - {id: a, labels: {k: v}}\n",
            "  devices:\n    - publicKey: k\n",
            "  devices:\n    -   id: a\n",
            "  devices:\n    - id: a\r\n",
            "  devices: [a]\n",
            "  devices: []\n  pin: p\n",
            "  devices: # list\n    - id: a\n  devices:\n    - id: b\n",
            "  devices:\n    - id: a: b\n",
            "  devices:\n    - id: \"a\" # comment\n",
            "  devices:\n    - {}\n",
            "  devices:\n    - id: a\n  devices: []\n",
        ];
        for tail in refused {
            let doc = format!("{HEAD}{tail}");
            assert!(read(&doc).is_none(), "accepted:\n{doc}");
        }
        assert!(read(HEAD).is_none(), "no list, nothing to read");
    }

    /// Random device lists built from plain and tricky pieces: whenever the fast path
    /// accepts one, serde_yaml reads the same document without error and to the same
    /// entries.
    #[test]
    fn whatever_it_accepts_serde_yaml_reads_the_same() {
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        let scalars = [
            "a",
            "dev-01",
            "007",
            "0x1F",
            "null",
            "~",
            "true",
            "a:b",
            "a: b",
            "a #b",
            "a#b",
            "#a",
            "-a",
            "- a",
            "\"q\"",
            "'q'",
            "\"a,b\"",
            "'it''s'",
            "\"a\\nb\"",
            "&x a",
            "*x",
            "!!str a",
            "k+/=",
            "{a}",
            "[a]",
            "a,b",
            "a}",
            "é",
            "",
            " a",
            "|",
            ">",
            "%a",
            "@a",
            "`a",
            "a  ",
            "?a",
        ];
        let keys = ["id", "publicKey", "pin", "labels", "colour", "id "];
        let mut accepted = 0;
        for _ in 0..3000 {
            let indent = ["  ", "    "][next(2)];
            let mut doc = format!("{HEAD}  devices:\n");
            for _ in 0..1 + next(3) {
                let scalar = |i: usize| scalars[i];
                match next(4) {
                    0 => doc.push_str(&format!(
                        "{indent}- {{id: {}, pin: {}}}\n",
                        scalar(next(scalars.len())),
                        scalar(next(scalars.len()))
                    )),
                    _ => {
                        doc.push_str(&format!("{indent}- id: {}\n", scalar(next(scalars.len()))));
                        for _ in 0..next(3) {
                            let key = keys[next(keys.len())];
                            match (key, next(3)) {
                                ("labels", 0) => doc.push_str(&format!(
                                    "{indent}  labels: {{k: {}, l: {}}}\n",
                                    scalar(next(scalars.len())),
                                    scalar(next(scalars.len()))
                                )),
                                ("labels", 1) => doc.push_str(&format!(
                                    "{indent}  labels:\n{indent}    k: {}\n",
                                    scalar(next(scalars.len()))
                                )),
                                (key, _) => doc
                                    .push_str(&format!("{indent}  {key}: {}\n", scalar(next(scalars.len())))),
                            }
                            if next(5) == 0 {
                                doc.push_str(&format!("{indent}# note\n"));
                            }
                        }
                    }
                }
            }
            if let Some(list) = read(&doc) {
                accepted += 1;
                let expected: DeviceSet = serde_yaml::from_str(&doc)
                    .unwrap_or_else(|e| panic!("fast path accepted what serde_yaml refuses ({e}):\n{doc}"));
                assert_eq!(list.entries, expected.spec.devices, "{doc}");
            }
        }
        // The generator is not all tricks: a good share goes the fast way.
        assert!(accepted > 100, "only {accepted} accepted");
    }

    #[test]
    fn a_large_list_matches_serde_yaml() {
        let mut doc = format!("{HEAD}  devices:\n");
        for i in 0..2000 {
            doc.push_str(&format!("    - id: dev-{i:05}\n      publicKey: k{i}+/=\n"));
            match i % 4 {
                0 => doc.push_str("      labels: {tier: canary, hw: cm4}\n"),
                1 => doc.push_str("      pin: edge-os-1-4-2\n"),
                2 => doc.push_str("      labels:\n        hw: x86\n"),
                _ => {}
            }
        }
        assert_same(&doc);
    }
}
