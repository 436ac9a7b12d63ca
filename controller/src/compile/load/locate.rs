//! Finding a field's line and column in a document's text, on the error path only.
//!
//! A field is named by a path: keys separated by `.`, sequence indices in brackets, and
//! keys that hold `.`, `[` or `"` (label keys such as `example.com/tier`) quoted in
//! brackets as Rust's `{:?}` writes them: `spec.labels["example.com/tier"]`.

use std::borrow::Cow;

use saphyr_parser::{Event, Parser, ScanError, Span};

/// One segment of a field path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Segment<'a> {
    Key(Cow<'a, str>),
    Index(usize),
}

/// The path segment for a mapping key of any text: `["example.com/tier"]`.
pub fn key_segment(key: &str) -> String {
    format!("[{key:?}]")
}

/// `spec.waves[2].percent` → `[Key(spec), Key(waves), Index(2), Key(percent)]`. A path
/// that cannot be read further ends where it stops making sense: locating then answers
/// with the deepest ancestor found.
pub(super) fn parse_path(path: &str) -> Vec<Segment<'_>> {
    let mut segments = Vec::new();
    let mut rest = path;
    while !rest.is_empty() {
        if let Some(tail) = rest.strip_prefix('.') {
            rest = tail;
        } else if let Some(quoted) = rest.strip_prefix("[\"") {
            let Some((key, tail)) = unquote(quoted) else { break };
            segments.push(Segment::Key(Cow::Owned(key)));
            rest = tail;
        } else if let Some(tail) = rest.strip_prefix('[') {
            let Some((index, tail)) = tail.split_once(']') else { break };
            let Ok(index) = index.parse() else { break };
            segments.push(Segment::Index(index));
            rest = tail;
        } else {
            let end = rest.find(['.', '[']).unwrap_or(rest.len());
            segments.push(Segment::Key(Cow::Borrowed(&rest[..end])));
            rest = &rest[end..];
        }
    }
    segments
}

/// Reads a key quoted by [`key_segment`] up to its closing `"]`: the key, and what
/// follows.
fn unquote(quoted: &str) -> Option<(String, &str)> {
    let mut key = String::new();
    let mut chars = quoted.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return quoted[i + 1..].strip_prefix(']').map(|tail| (key, tail)),
            '\\' => match chars.next()?.1 {
                'n' => key.push('\n'),
                'r' => key.push('\r'),
                't' => key.push('\t'),
                '0' => key.push('\0'),
                'u' => {
                    // `\u{1f}`
                    let (start, '{') = chars.next()? else { return None };
                    let end = quoted[start..].find('}')? + start;
                    key.push(char::from_u32(u32::from_str_radix(&quoted[start + 1..end], 16).ok()?)?);
                    while chars.next()?.0 < end {}
                }
                other => key.push(other),
            },
            c => key.push(c),
        }
    }
    None
}

type Events<'a> = Parser<'a, saphyr_parser::StrInput<'a>>;

/// What to find at the end of a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Target {
    /// The value of the last segment.
    Value,
    /// The key that is the last segment, at its `n`th occurrence (from 0) in its
    /// mapping: a key written twice is reported at its second occurrence.
    Key(usize),
}

/// Finds the (line, column) of the node at `path` in a one-document YAML text, or of its
/// deepest existing ancestor. `None` when the text does not parse that far.
pub(super) fn locate_in(doc: &str, path: &[Segment<'_>], target: Target) -> Option<(u32, u32)> {
    let mut events: Events<'_> = Parser::new_from_str(doc);
    // Up to the root node of the first document.
    let (event, span) = loop {
        match events.next()?.ok()? {
            (Event::StreamStart | Event::DocumentStart(_), _) => continue,
            (Event::StreamEnd, _) => return None,
            other => break other,
        }
    };
    let mut best = position(&span);
    descend(&mut events, event, span, path, target, &mut best).ok()?;
    Some(best)
}

fn position(span: &Span) -> (u32, u32) {
    (span.start.line() as u32, span.start.col() as u32 + 1)
}

/// Walks from the node that starts with `event` along `path`, recording in `best` the
/// position of the deepest node reached.
fn descend(
    events: &mut Events<'_>,
    event: Event<'_>,
    span: Span,
    path: &[Segment<'_>],
    target: Target,
    best: &mut (u32, u32),
) -> Result<(), ScanError> {
    *best = position(&span);
    let Some((segment, rest)) = path.split_first() else { return Ok(()) };
    match (event, segment) {
        (Event::MappingStart(..), Segment::Key(key)) => {
            let mut seen = 0;
            loop {
                let (k, key_span) = next(events)?;
                match k {
                    Event::MappingEnd => return Ok(()),
                    Event::Scalar(ref name, ..) if name == key => match (rest.is_empty(), target) {
                        (true, Target::Key(n)) if seen < n => {
                            seen += 1;
                            let (value, _) = next(events)?;
                            skip(events, value)?;
                        }
                        (true, Target::Key(_)) => {
                            *best = position(&key_span);
                            return Ok(());
                        }
                        _ => {
                            let (value, value_span) = next(events)?;
                            return descend(events, value, value_span, rest, target, best);
                        }
                    },
                    other => {
                        skip(events, other)?;
                        let (value, _) = next(events)?;
                        skip(events, value)?;
                    }
                }
            }
        }
        (Event::SequenceStart(..), Segment::Index(index)) => {
            for _ in 0..*index {
                let (item, _) = next(events)?;
                if item == Event::SequenceEnd {
                    return Ok(());
                }
                skip(events, item)?;
            }
            let (item, item_span) = next(events)?;
            if item == Event::SequenceEnd {
                return Ok(());
            }
            descend(events, item, item_span, rest, target, best)
        }
        _ => Ok(()),
    }
}

fn next<'a>(events: &mut Events<'a>) -> Result<(Event<'a>, Span), ScanError> {
    match events.next() {
        Some(result) => result,
        None => Ok((Event::StreamEnd, Span::default())),
    }
}

/// Consumes the rest of the node that starts with `event`.
fn skip(events: &mut Events<'_>, event: Event<'_>) -> Result<(), ScanError> {
    let mut depth = match event {
        Event::MappingStart(..) | Event::SequenceStart(..) => 1usize,
        _ => return Ok(()),
    };
    while depth > 0 {
        match next(events)?.0 {
            Event::MappingStart(..) | Event::SequenceStart(..) => depth += 1,
            Event::MappingEnd | Event::SequenceEnd => depth -= 1,
            Event::StreamEnd => return Ok(()),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(k: &str) -> Segment<'_> {
        Segment::Key(Cow::Borrowed(k))
    }

    #[test]
    fn paths_parse() {
        assert_eq!(
            parse_path("spec.waves[2].percent"),
            [key("spec"), key("waves"), Segment::Index(2), key("percent")]
        );
        assert_eq!(parse_path("a[1][2]"), [key("a"), Segment::Index(1), Segment::Index(2)]);
        let odd = "example.com/x[\"y\"]\\\n\u{1}é";
        assert_eq!(
            parse_path(&format!("spec.labels{}.more", key_segment(odd))),
            [key("spec"), key("labels"), Segment::Key(Cow::Owned(odd.to_owned())), key("more")]
        );
        assert_eq!(parse_path("a[\"unclosed"), [key("a")]);
    }

    #[test]
    fn keys_are_found_at_each_occurrence() {
        let doc = "spec:\n  labels:\n    a.b/c: x\n    d: y\n    a.b/c: z\n";
        let at = |path: &str, target| locate_in(doc, &parse_path(path), target);
        let path = format!("spec.labels{}", key_segment("a.b/c"));
        assert_eq!(at(&path, Target::Value), Some((3, 12)));
        assert_eq!(at(&path, Target::Key(0)), Some((3, 5)));
        assert_eq!(at(&path, Target::Key(1)), Some((5, 5)));
        assert_eq!(at("spec.labels.d", Target::Key(0)), Some((4, 5)));
    }
}
