//! Splitting a file into its documents at `---` / `...` lines.

use std::sync::Arc;

use super::{DocumentText, Located, Location};

/// One document of a file, found by splitting at document markers.
pub(super) struct Chunk<'a> {
    pub(super) file: &'a Arc<str>,
    /// The whole file, as text and as the shared bytes documents keep.
    pub(super) file_text: &'a str,
    pub(super) file_bytes: &'a Arc<[u8]>,
    pub(super) start: usize,
    pub(super) end: usize,
    /// File line of the chunk's first line.
    pub(super) first_line: u32,
    /// File line of the first line with content (the document's location).
    pub(super) content_line: u32,
}

impl Chunk<'_> {
    /// The document's text.
    pub(super) fn text(&self) -> &str {
        &self.file_text[self.start..self.end]
    }

    /// Where the document starts.
    pub(super) fn location(&self) -> Location {
        Location { file: self.file.clone(), line: self.content_line, column: 1 }
    }

    /// `value`, located in this document.
    pub(super) fn located<T>(&self, value: T) -> Located<T> {
        Located {
            value,
            location: self.location(),
            text: Some(DocumentText {
                file_bytes: self.file_bytes.clone(),
                start: self.start,
                end: self.end,
                first_line: self.first_line,
            }),
        }
    }
}

/// Whether a line is a document marker (`---` or `...`, alone or followed by a space).
pub(super) fn is_marker(line: &str) -> bool {
    let line = line.trim_end_matches(['\r', '\n']);
    (line.starts_with("---") || line.starts_with("..."))
        && line[3..].chars().next().is_none_or(|c| c == ' ' || c == '\t')
}

/// Splits a file into documents. Chunks holding only comments, blank lines and markers
/// are dropped: they are not documents.
pub(super) fn split<'a>(file: &'a Arc<str>, file_bytes: &'a Arc<[u8]>, file_text: &'a str) -> Vec<Chunk<'a>> {
    let mut chunks = Vec::new();
    // A byte order mark is not content; the YAML parser misreads it before CRLF lines.
    let bom = if file_text.starts_with('\u{feff}') { '\u{feff}'.len_utf8() } else { 0 };
    let mut start = bom;
    let mut first_line = 1;
    let mut content_line = None;
    let mut line_no = 0u32;
    let mut offset = bom;
    let close =
        |chunks: &mut Vec<Chunk<'a>>, start: usize, end: usize, first_line: u32, content: Option<u32>| {
            if let Some(content_line) = content {
                chunks.push(Chunk { file, file_text, file_bytes, start, end, first_line, content_line });
            }
        };
    for line in file_text[bom..].split_inclusive('\n') {
        line_no += 1;
        if is_marker(line) {
            // `--- ` may carry content on the same line (`--- {kind: Group, ...}`).
            let starts_document = line.starts_with("---");
            close(&mut chunks, start, offset, first_line, content_line.take());
            start = offset;
            first_line = line_no;
            if starts_document && !is_blank_or_comment(&line[3..]) {
                content_line = Some(line_no);
            }
            if !starts_document {
                // `...` ends a document; what follows starts after it.
                start = offset + line.len();
                first_line = line_no + 1;
            }
        } else if content_line.is_none() && !is_blank_or_comment(line) && !line.starts_with('%') {
            content_line = Some(line_no);
        }
        offset += line.len();
    }
    close(&mut chunks, start, offset, first_line, content_line);
    chunks
}

fn is_blank_or_comment(line: &str) -> bool {
    let t = line.trim();
    t.is_empty() || t.starts_with('#')
}
