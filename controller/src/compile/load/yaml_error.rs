//! serde_yaml's errors as diagnostics at file positions.

use super::split::Chunk;
use crate::compile::diagnostic::{Code, Diagnostic};
use crate::compile::load::Location;

/// A syntax error: the document is not well-formed YAML.
pub(super) fn syntax_error(chunk: &Chunk<'_>, error: &serde_yaml::Error) -> Diagnostic {
    let (message, (line, column)) = message_and_position(chunk, error);
    Diagnostic::new(Code::MalformedYaml, Location { file: chunk.file.clone(), line, column }, message)
}

/// A schema error of well-formed YAML: a missing, unknown or duplicate field, or a
/// value of the wrong type.
pub(super) fn schema_error(chunk: &Chunk<'_>, error: &serde_yaml::Error) -> Diagnostic {
    let (message, (line, column)) = message_and_position(chunk, error);
    let code = classify(&message);
    let location = match duplicate_key(&message) {
        // serde_yaml points at the mapping; the second occurrence of the key is what
        // is wrong.
        Some(path) if code == Code::DuplicateKey => chunk.located(()).locate_key(&path, 1),
        _ => Location { file: chunk.file.clone(), line, column },
    };
    Diagnostic::new(code, location, message)
}

/// A schema error found in a document read through a [`serde_yaml::Value`] (one with
/// merge keys), which has no positions: located by its path.
pub(super) fn value_error(
    chunk: &Chunk<'_>,
    error: &serde_path_to_error::Error<serde_yaml::Error>,
) -> Diagnostic {
    let path = error.path().to_string();
    let message = if path == "." { error.inner().to_string() } else { format!("{path}: {}", error.inner()) };
    Diagnostic::new(classify(&message), chunk.located(()).locate(&path), message)
}

/// The path of the key a duplicate-key message is about (`spec.labels: duplicate entry
/// with key `a``, `duplicate field `kind``), for [`Located::locate_key`](super::Located::locate_key).
fn duplicate_key(message: &str) -> Option<String> {
    let (prefix, key) = ["duplicate field `", "duplicate entry with key `"]
        .iter()
        .find_map(|form| message.split_once(form))?;
    let key = &key[..key.rfind('`')?];
    let parent = prefix.strip_suffix(": ").unwrap_or(prefix);
    Some(format!("{parent}{}", super::key_segment(key)))
}

/// The code of a serde schema error, from serde's stable message forms.
pub(super) fn classify(message: &str) -> Code {
    if message.contains("missing field") {
        Code::MissingField
    } else if message.contains("unknown field") {
        Code::UnknownField
    } else if message.contains("duplicate field") || message.contains("duplicate entry") {
        Code::DuplicateKey
    } else {
        Code::InvalidValue
    }
}

/// Splits serde_yaml's message into its text parts and the ` at line L column C` marks
/// that follow them. libyaml's syntax errors have two: where the problem is, then, after
/// `, while scanning …`, where the construct being read started.
fn split_marks(message: &str) -> Vec<(&str, Option<(u32, u32)>)> {
    let mut parts = Vec::new();
    let mut rest = message;
    while let Some(at) = rest.find(" at line ") {
        let (text, tail) = rest.split_at(at);
        let tail = &tail[" at line ".len()..];
        let number_end = |s: &str| s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let line_end = number_end(tail);
        let Some(after_line) = tail[line_end..].strip_prefix(" column ") else { break };
        let column_end = number_end(after_line);
        let mark = tail[..line_end].parse().ok().zip(after_line[..column_end].parse().ok());
        parts.push((text, mark));
        rest = after_line[column_end..].trim_start_matches(", ");
    }
    if !rest.is_empty() || parts.is_empty() {
        parts.push((rest, None));
    }
    parts
}

/// The diagnostic message and position for a serde_yaml error. Marks inside the
/// message are rewritten to file lines. An error at the end of the document (an
/// unclosed quote or bracket) is reported where the unfinished construct starts, or
/// else at the end of the last line: never past it.
fn message_and_position(chunk: &Chunk<'_>, error: &serde_yaml::Error) -> (String, (u32, u32)) {
    let to_file = |(line, column): (u32, u32)| (chunk.first_line + line - 1, column);
    let end = end_of_content(chunk);
    let mut position = error
        .location()
        .map_or((chunk.content_line, 1), |at| to_file((at.line() as u32, at.column() as u32)));
    let text = error.to_string();
    let parts = split_marks(&text);
    let at_end = parts[0].0.contains("end of stream") || position > end;
    let mut message = parts[0].0.to_owned();
    let mut construct = None;
    for (context, mark) in &parts[1..] {
        message.push_str(", ");
        message.push_str(context);
        if let Some(mark) = mark {
            let (line, column) = to_file(*mark);
            if at_end {
                construct = Some((line, column));
            } else {
                message.push_str(&format!(" that starts at line {line}, column {column}"));
            }
        }
    }
    if at_end {
        position = construct.unwrap_or(end).min(end);
        if !parts[0].0.contains("end of stream") {
            message.push_str(" (the document ends first)");
        }
    }
    (message, position)
}

/// The file position just after the document's last character that is not blank or a
/// comment.
fn end_of_content(chunk: &Chunk<'_>) -> (u32, u32) {
    let mut end = (chunk.content_line, 1);
    for (i, line) in chunk.text().lines().enumerate() {
        let content = line.trim_end();
        if !content.is_empty() && !content.trim_start().starts_with('#') {
            end = (chunk.first_line + i as u32, content.chars().count() as u32 + 1);
        }
    }
    end
}
