//! Reading a document's text without parsing it: the checks that must come before the
//! YAML parser (size, nesting depth, characters YAML forbids), and the envelope fields
//! (`kind`, `metadata.name`) of a document the parser cannot read.

use std::ops::Range;

use crate::compile::limits::{MAX_DOCUMENT_BYTES, MAX_NESTING_DEPTH};

/// Why a document is refused before it is parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Refusal {
    /// Larger than [`MAX_DOCUMENT_BYTES`].
    TooLarge,
    /// Collections nest deeper than [`MAX_NESTING_DEPTH`]; the byte offset where the
    /// limit is crossed.
    TooDeep { offset: usize },
    /// A character YAML does not allow (a C0 or C1 control character other than tab and
    /// line breaks, U+FFFE, U+FFFF), at this byte offset.
    Forbidden { offset: usize, character: char },
}

/// Checks a document's text before it is parsed, in one pass over its bytes.
///
/// The depth is that of collections inside collections: block mappings and sequences
/// by their indentation and `- ` entries, flow collections by their brackets (outside
/// quotes, comments and block scalars). It is counted without parsing because the
/// YAML parser's cost grows with the square of the flow depth: an 80 KB line of
/// brackets would take minutes.
///
/// `shallow` is a range of whole lines known to nest no deeper than a few levels (a
/// device list the fast path read): only its characters are checked.
pub(super) fn check(text: &str, shallow: Option<Range<usize>>) -> Result<(), Refusal> {
    if text.len() > MAX_DOCUMENT_BYTES {
        return Err(Refusal::TooLarge);
    }
    let (before, after) = match shallow {
        Some(range) => {
            if let Some((at, character)) = forbidden_character(&text[range.clone()]) {
                return Err(Refusal::Forbidden { offset: range.start + at, character });
            }
            (0..range.start, range.end..text.len())
        }
        None => (0..text.len(), text.len()..text.len()),
    };
    let mut depth = Depth::default();
    for part in [before, after] {
        let mut offset = part.start;
        for line in text[part].split_inclusive('\n') {
            if let Some((at, character)) = forbidden_character(line) {
                return Err(Refusal::Forbidden { offset: offset + at, character });
            }
            depth.line(line).map_err(|at| Refusal::TooDeep { offset: offset + at })?;
            offset += line.len();
        }
    }
    Ok(())
}

/// The first character of `line` that YAML forbids, with its byte offset.
fn forbidden_character(line: &str) -> Option<(usize, char)> {
    // Nearly every line is printable ASCII; that test runs without branches per byte.
    let plain = line.as_bytes().iter().fold(true, |ok, &b| ok & ((0x20..0x7f).contains(&b) | (b == b'\n')));
    if plain {
        return None;
    }
    line.char_indices().find(|&(_, c)| {
        let c = c as u32;
        (c < 0x20 && !matches!(c, 0x09 | 0x0a | 0x0d))
            || (0x7f..=0x9f).contains(&c) && c != 0x85
            || c == 0xfffe
            || c == 0xffff
    })
}

/// The nesting state carried from one line to the next.
#[derive(Default)]
struct Depth {
    /// Indentation of the open block collections.
    indents: Vec<usize>,
    /// Block collections open on the current line: its indentation level plus `- `
    /// entries written on one line (`- - a`).
    block: usize,
    /// Open flow collections.
    flow: usize,
    /// Inside a quoted scalar that goes on over lines: its quote.
    quote: Option<u8>,
    /// Inside a block scalar (`|`, `>`): the indentation of the line that opened it, and
    /// of its content once seen.
    block_scalar: Option<(usize, Option<usize>)>,
}

impl Depth {
    /// Reads one line; `Err` holds the offset in the line where the depth is crossed.
    fn line(&mut self, line: &str) -> Result<(), usize> {
        let body = line.trim_end_matches(['\n', '\r']);
        let content = body.trim_start_matches(' ');
        let indent = body.len() - content.len();
        if let Some((parent, text_indent)) = self.block_scalar {
            let inside = match text_indent {
                _ if content.is_empty() => true,
                None => indent > parent,
                Some(text) => indent >= text,
            };
            if inside {
                self.block_scalar = Some((parent, text_indent.or(Some(indent))));
                return Ok(());
            }
            self.block_scalar = None;
        }
        let mut at = indent;
        if self.quote.is_none() && self.flow == 0 {
            if content.is_empty() || content.starts_with('#') {
                return Ok(());
            }
            if super::split::is_marker(body) {
                // A document marker may carry the root node on its line.
                self.indents.clear();
                at = 3;
            } else {
                while self.indents.last().is_some_and(|&i| i > indent) {
                    self.indents.pop();
                }
                if self.indents.last() != Some(&indent) {
                    self.indents.push(indent);
                }
            }
            self.block = self.indents.len();
            let bytes = body.as_bytes();
            while at < bytes.len()
                && matches!(bytes[at], b'-' | b'?')
                && bytes.get(at + 1).is_none_or(|&b| b == b' ')
            {
                self.block += 1;
                at += 1;
                while bytes.get(at) == Some(&b' ') {
                    at += 1;
                }
            }
            if self.block > MAX_NESTING_DEPTH {
                return Err(at.min(body.len()));
            }
        }
        self.rest(body.as_bytes(), at, indent)
    }

    /// Scans the line from `at` for quotes, flow brackets, comments and block scalars.
    fn rest(&mut self, bytes: &[u8], mut at: usize, indent: usize) -> Result<(), usize> {
        // Whether a node may start here (after a key's `: `, a `,` or a bracket); only
        // there do quotes and brackets open something, elsewhere they are plain text.
        let mut node_start = true;
        let mut after_space = true;
        while at < bytes.len() {
            let c = bytes[at];
            if let Some(quote) = self.quote {
                match c {
                    b'\'' if quote == b'\'' && bytes.get(at + 1) == Some(&b'\'') => at += 1,
                    b'\\' if quote == b'"' => at += 1,
                    _ if c == quote => {
                        self.quote = None;
                        node_start = false;
                    }
                    _ => {}
                }
                at += 1;
                continue;
            }
            match c {
                b' ' | b'\t' => {
                    after_space = true;
                    at += 1;
                    continue;
                }
                b'#' if after_space => return Ok(()),
                b'"' | b'\'' if node_start => self.quote = Some(c),
                b'[' | b'{' if node_start || self.flow > 0 => {
                    self.flow += 1;
                    if self.block + self.flow > MAX_NESTING_DEPTH {
                        return Err(at);
                    }
                    node_start = true;
                }
                b']' | b'}' if self.flow > 0 => {
                    self.flow -= 1;
                    node_start = false;
                }
                b',' if self.flow > 0 => node_start = true,
                b':' if bytes.get(at + 1).is_none_or(|&b| b == b' ' || self.flow > 0) => node_start = true,
                b'|' | b'>' if node_start && self.flow == 0 => {
                    self.block_scalar = Some((indent, None));
                    return Ok(());
                }
                b'&' | b'!' if node_start => {
                    // An anchor or tag comes before the node it names.
                    while at < bytes.len() && bytes[at] != b' ' {
                        at += 1;
                    }
                    continue;
                }
                _ if self.flow == 0 && !node_start => {
                    // Inside a plain scalar of a block: only a `: ` can start a node, and
                    // a ` #` a comment; skip to the next of either.
                    match bytes[at + 1..].iter().position(|&b| b == b':' || b == b'#') {
                        Some(next) => {
                            at += next + 1;
                            after_space = matches!(bytes[at - 1], b' ' | b'\t');
                        }
                        None => return Ok(()),
                    }
                    continue;
                }
                _ => node_start = false,
            }
            after_space = false;
            at += 1;
        }
        Ok(())
    }
}

/// The value of a top-level `kind:` line, if the document has one in block style and
/// it is a plain word: the common case, found without parsing. Anything else (`kind: 5`,
/// a flow-style document, a quoted key) is left to the parser.
pub(super) fn kind(text: &str) -> Option<&str> {
    top_level_value(text, "kind").filter(|v| v.bytes().all(|b| b.is_ascii_alphabetic()))
}

/// The envelope of a document the parser cannot read: its top-level `kind:` and its
/// `metadata.name`, when both are written plainly, in block style or as
/// `metadata: {name: x}`.
pub(super) fn envelope(text: &str) -> Option<(&str, &str)> {
    let kind = kind(text)?;
    let name = match top_level_value(text, "metadata") {
        Some(flow) => {
            let inner = flow.strip_prefix('{')?.strip_suffix('}')?;
            inner.split(',').find_map(|field| plain(field.trim().strip_prefix("name:")?))?
        }
        None => {
            let mut lines = text.lines().skip_while(|l| l.trim_end() != "metadata:").skip(1);
            let first = lines.find(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))?;
            let indent = first.len() - first.trim_start().len();
            std::iter::once(first)
                .chain(lines)
                .take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() >= indent)
                .filter(|l| l.len() - l.trim_start().len() == indent)
                .find_map(|l| plain(l.trim_start().strip_prefix("name:")?))?
        }
    };
    Some((kind, name))
}

/// The value of the top-level `key:` line, without quotes or a trailing comment.
fn top_level_value<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines().find_map(|line| plain(line.strip_prefix(key)?.strip_prefix(':')?))
}

/// A scalar written on one line: without a trailing comment, surrounding spaces and
/// quotes. `None` when empty.
fn plain(value: &str) -> Option<&str> {
    let value = value.split(" #").next().unwrap_or(value).trim();
    let value = value.trim_matches(|c| c == '"' || c == '\'');
    (!value.is_empty()).then_some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The deepest nesting the scan counts in `text`.
    fn depth_of(text: &str) -> usize {
        let mut depth = Depth::default();
        let mut deepest = 0;
        for line in text.split_inclusive('\n') {
            depth.line(line).unwrap();
            deepest = deepest.max(depth.block + depth.flow);
        }
        deepest
    }

    #[test]
    fn ordinary_documents_are_shallow() {
        let policy = "\
apiVersion: waveguide.dev/v1alpha1
kind: Policy
metadata: {name: p}
spec:
  selector: {groups: [eu], matchLabels: {a: b}}
  rollout:
    waves:
      - name: canary
        selector:
          matchExpressions:
            - {key: hw, operator: In, values: [rpi4, x86]}
        bake: 1h # comment with [ and {
      - note: 'it''s [not] a list'
        text: |
          [[[[[[[[[ not YAML, just text
          {{{{{{{{{
        url: http://example.com/a[1]{2} # see: [x
      - {a: [b]}
";
        assert!(check(policy, None).is_ok());
        assert!(depth_of(policy) < 12, "{}", depth_of(policy));
    }

    #[test]
    fn deep_flow_and_block_nesting_are_refused_where_they_cross_the_limit() {
        let deep = format!("spec: {{labels: {}{}}}\n", "[".repeat(100), "]".repeat(100));
        let Err(Refusal::TooDeep { offset }) = check(&deep, None) else { panic!() };
        // Two levels come before the brackets: the document and `spec`'s flow mapping.
        assert_eq!(offset, "spec: {labels: ".len() + MAX_NESTING_DEPTH - 2);
        let block = format!("spec:\n  x:\n    {}a\n", "- ".repeat(100));
        assert!(matches!(check(&block, None), Err(Refusal::TooDeep { .. })));
        let indented: String = (0..100).map(|i| format!("{}k{i}:\n", " ".repeat(i))).collect();
        assert!(matches!(check(&indented, None), Err(Refusal::TooDeep { .. })));
        // Brackets inside quotes, comments and block scalars are text.
        let text = format!("a: \"{0}\"\nb: '{0}'\nc: | \n  {0}\n# {0}\nd: x{0}\n", "[".repeat(100));
        assert_eq!(check(&text, None), Ok(()));
    }

    #[test]
    fn forbidden_characters_are_found_where_they_are() {
        assert_eq!(
            check("a: b\nc: \"x\u{1}y\"\n", None),
            Err(Refusal::Forbidden { offset: 10, character: '\u{1}' })
        );
        assert_eq!(check("a: \u{85}é\t\r\n", None), Ok(()));
        assert!(matches!(check("a: \u{9f}\n", None), Err(Refusal::Forbidden { offset: 3, .. })));
        // In a range known to be shallow, characters are still checked.
        let list = "spec:\n  devices:\n    - id: a\u{7f}\n";
        assert_eq!(
            check(list, Some(6..list.len())),
            Err(Refusal::Forbidden { offset: 28, character: '\u{7f}' })
        );
    }

    #[test]
    fn envelopes_of_broken_documents() {
        let block = "apiVersion: v\nkind: Group\nmetadata:\n  # the name\n  labels: {a: b}\n  name: \"eu\"\nspec: {labels: [\n";
        assert_eq!(envelope(block), Some(("Group", "eu")));
        let flow = "kind: Release # r\nmetadata: {labels: {}, name: r1}\nspec: [\n";
        assert_eq!(envelope(flow), Some(("Release", "r1")));
        assert_eq!(envelope("kind: 5\nmetadata: {name: x}\n"), None);
        assert_eq!(envelope("kind: Group\nmetadata:\n  labels:\n    name: x\n"), None);
        assert_eq!(kind("kind: Group\n"), Some("Group"));
        assert_eq!(kind("kind: [a]\n"), None);
    }
}
