//! Loading: fleet files → typed documents, each with the file, line and column it came
//! from.
//!
//! Files are split into documents at `---` / `...` lines (YAML forbids those at column 0
//! inside any scalar, so the split is exact), and the documents are parsed in parallel.
//! A broken document is reported and skipped; it never hides the others.
//!
//! Positions inside a document are not recorded while parsing: a DeviceSet may list
//! 100,000 devices, and a map of every field's position would cost more than the parse.
//! [`Located::locate`] instead re-reads the one document when a diagnostic needs the line
//! of a field, which happens only on the error path.

mod device_list;

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use rayon::prelude::*;
use saphyr_parser::{Event, Parser, ScanError, Span};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize, Serializer};

use super::diagnostic::{Code, Diagnostic};
use crate::model::{Device, DeviceSet, Group, Kind, Object, Policy, Release, API_VERSION};
use crate::source::{FleetFile, FleetFiles};

/// A place in a fleet file. Lines and columns are 1-based; columns count characters.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Location {
    /// Path relative to the fleet root, `/`-separated.
    pub file: Arc<str>,
    /// Line, from 1.
    pub line: u32,
    /// Column, from 1.
    pub column: u32,
}

impl Location {
    /// A location in `file`.
    pub fn new(file: impl Into<Arc<str>>, line: u32, column: u32) -> Location {
        Location { file: file.into(), line, column }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.column)
    }
}

impl Serialize for Location {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut s = serializer.serialize_struct("Location", 3)?;
        s.serialize_field("file", &*self.file)?;
        s.serialize_field("line", &self.line)?;
        s.serialize_field("column", &self.column)?;
        s.end()
    }
}

/// The text of the document a value was read from, kept (shared with the other documents
/// of its file) so that field positions can be found when they are needed.
#[derive(Clone)]
struct DocumentText {
    /// The whole file, valid UTF-8 (checked when it was loaded).
    file_bytes: Arc<[u8]>,
    start: usize,
    end: usize,
    /// The file line of the document text's first line.
    first_line: u32,
}

impl fmt::Debug for DocumentText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DocumentText(bytes {}..{}, from line {})", self.start, self.end, self.first_line)
    }
}

/// A value read from a fleet document, with where the document starts.
#[derive(Debug, Clone)]
pub struct Located<T> {
    /// The document.
    pub value: T,
    /// Where the document starts (its first key).
    pub location: Location,
    text: Option<DocumentText>,
}

impl<T> Located<T> {
    /// A value with a known location but no document text: [`Located::locate`] then
    /// answers with the document's location. For values built in code, e.g. in tests.
    pub fn new(value: T, location: Location) -> Located<T> {
        Located { value, location, text: None }
    }

    /// The location of a field of the document, by path: keys separated by `.`, sequence
    /// indices in brackets, e.g. `spec.parent`, `spec.rollout.waves[2].percent`,
    /// `spec.devices[41].id`. Points at the field's value. When the path does not exist
    /// (the field was defaulted), answers with its deepest existing parent, and at worst
    /// with the document's location.
    ///
    /// This re-reads the document, so call it when reporting, not in a loop over healthy
    /// data.
    pub fn locate(&self, path: &str) -> Location {
        let Some(text) = &self.text else { return self.location.clone() };
        // Chunks start and end at line breaks of valid UTF-8, so this always succeeds.
        let Ok(doc) = std::str::from_utf8(&text.file_bytes[text.start..text.end]) else {
            return self.location.clone();
        };
        match locate_in(doc, &parse_path(path)) {
            Some((line, column)) => {
                Location { file: self.location.file.clone(), line: text.first_line + line - 1, column }
            }
            None => self.location.clone(),
        }
    }

    /// The location of `metadata.name`.
    pub fn name_location(&self) -> Location {
        self.locate("metadata.name")
    }

    /// The same location and document text around another value.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Located<U> {
        Located { value: f(self.value), location: self.location, text: self.text }
    }
}

/// A fleet document's object, owned or shared.
pub trait AsObject {
    /// The kind's spec.
    type Spec;
    /// The object.
    fn object(&self) -> &Object<Self::Spec>;
}

impl<S> AsObject for Object<S> {
    type Spec = S;
    fn object(&self) -> &Object<S> {
        self
    }
}

impl<S> AsObject for Arc<Object<S>> {
    type Spec = S;
    fn object(&self) -> &Object<S> {
        self
    }
}

impl<T: AsObject> Located<T> {
    /// The document's `metadata.name`.
    pub fn name(&self) -> &str {
        &self.value.object().metadata.name
    }
}

/// Every document of the fleet repository, by kind, in file order (path, then line).
#[derive(Debug, Clone, Default)]
pub struct Documents {
    pub groups: Vec<Located<Group>>,
    pub devices: Vec<Located<Arc<Device>>>,
    /// Shared, like `devices`: a device set can hold many thousand devices, and an
    /// unchanged file's sets are reused from one compilation to the next without a copy.
    pub device_sets: Vec<Located<Arc<DeviceSet>>>,
    pub releases: Vec<Located<Release>>,
    pub policies: Vec<Located<Policy>>,
    /// Documents that did not load (their errors are reported) but whose kind and name
    /// could still be read: references to them are not reported as unknown as well.
    pub unparsed: Vec<Unparsed>,
}

/// The documents that declare devices (Devices and DeviceSets), compared by identity: a
/// document is shared from one load to the next only while its file is unchanged, so
/// equal means the same devices, declared at the same places.
#[derive(Debug)]
pub struct DeviceDocuments {
    sets: Vec<Arc<DeviceSet>>,
    devices: Vec<Arc<Device>>,
}

impl DeviceDocuments {
    /// The device documents of `documents`.
    pub fn of(documents: &Documents) -> DeviceDocuments {
        DeviceDocuments {
            sets: documents.device_sets.iter().map(|d| d.value.clone()).collect(),
            devices: documents.devices.iter().map(|d| d.value.clone()).collect(),
        }
    }
}

impl PartialEq for DeviceDocuments {
    fn eq(&self, other: &DeviceDocuments) -> bool {
        fn same<T>(a: &[Arc<T>], b: &[Arc<T>]) -> bool {
            a.len() == b.len() && a.iter().zip(b).all(|(a, b)| Arc::ptr_eq(a, b))
        }
        same(&self.sets, &other.sets) && same(&self.devices, &other.devices)
    }
}

/// What can be read of a document that failed to load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unparsed {
    /// Its `kind`.
    pub kind: Kind,
    /// Its `metadata.name`.
    pub name: String,
    /// Where it starts.
    pub location: Location,
}

impl Documents {
    /// Number of documents of all kinds.
    pub fn len(&self) -> usize {
        self.groups.len()
            + self.devices.len()
            + self.device_sets.len()
            + self.releases.len()
            + self.policies.len()
    }

    /// True when there is no document.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One segment of a field path.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment<'a> {
    Key(&'a str),
    Index(usize),
}

/// `spec.waves[2].percent` → `[Key(spec), Key(waves), Index(2), Key(percent)]`.
fn parse_path(path: &str) -> Vec<Segment<'_>> {
    let mut segments = Vec::new();
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let (key, mut rest) = part.split_once('[').map_or((part, ""), |(k, r)| (k, r));
        if !key.is_empty() {
            segments.push(Segment::Key(key));
        }
        while let Some((index, tail)) = rest.split_once(']') {
            if let Ok(i) = index.parse() {
                segments.push(Segment::Index(i));
            }
            rest = tail.strip_prefix('[').unwrap_or(tail);
        }
    }
    segments
}

type Events<'a> = Parser<'a, saphyr_parser::StrInput<'a>>;

/// Finds the (line, column) of the node at `path` in a one-document YAML text, or of its
/// deepest existing ancestor. `None` when the text does not parse that far.
fn locate_in(doc: &str, path: &[Segment<'_>]) -> Option<(u32, u32)> {
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
    descend(&mut events, event, span, path, &mut best).ok()?;
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
    best: &mut (u32, u32),
) -> Result<(), ScanError> {
    *best = position(&span);
    let Some((segment, rest)) = path.split_first() else { return Ok(()) };
    match (event, segment) {
        (Event::MappingStart(..), Segment::Key(key)) => loop {
            let (k, _) = next(events)?;
            match k {
                Event::MappingEnd => return Ok(()),
                Event::Scalar(ref name, ..) if name == key => {
                    let (value, value_span) = next(events)?;
                    return descend(events, value, value_span, rest, best);
                }
                other => {
                    skip(events, other)?;
                    let (value, _) = next(events)?;
                    skip(events, value)?;
                }
            }
        },
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
            descend(events, item, item_span, rest, best)
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

/// One document of a file, found by splitting at document markers.
struct Chunk<'a> {
    file: &'a Arc<str>,
    /// The whole file, as text and as the shared bytes documents keep.
    file_text: &'a str,
    file_bytes: &'a Arc<[u8]>,
    start: usize,
    end: usize,
    /// File line of the chunk's first line.
    first_line: u32,
    /// File line of the first line with content (the document's location).
    content_line: u32,
}

impl Chunk<'_> {
    /// Where the document starts.
    fn location(&self) -> Location {
        Location { file: self.file.clone(), line: self.content_line, column: 1 }
    }

    /// `value`, located in this document.
    fn located<T>(&self, value: T) -> Located<T> {
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
fn is_marker(line: &str) -> bool {
    let line = line.trim_end_matches(['\r', '\n']);
    (line.starts_with("---") || line.starts_with("..."))
        && line[3..].chars().next().is_none_or(|c| c == ' ' || c == '\t')
}

/// Splits a file into documents. Chunks holding only comments, blank lines and markers
/// are dropped: they are not documents.
fn split<'a>(file: &'a Arc<str>, file_bytes: &'a Arc<[u8]>, file_text: &'a str) -> Vec<Chunk<'a>> {
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

/// What one document turned into.
#[derive(Clone)]
enum Loaded {
    Group(Located<Group>),
    Device(Located<Arc<Device>>),
    DeviceSet(Located<Arc<DeviceSet>>),
    Release(Located<Release>),
    Policy(Located<Policy>),
    Failed(Diagnostic),
}

/// What loading one file produced: its documents (with what can be read of those that
/// failed) and the file's own diagnostic, if it could not be decoded.
#[derive(Clone, Default)]
struct FileLoad {
    documents: Vec<(Loaded, Option<Unparsed>)>,
    undecodable: Option<Diagnostic>,
}

/// The files of the last load, parsed: a file whose bytes have not changed since is not
/// parsed again. A fleet commit usually changes a file or two of hundreds, so the
/// controller, which compiles every commit, keeps one of these.
#[derive(Default)]
pub struct LoadCache {
    files: HashMap<Arc<str>, (Arc<[u8]>, FileLoad)>,
}

impl fmt::Debug for LoadCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadCache").field("files", &self.files.len()).finish()
    }
}

impl LoadCache {
    /// The cached load of `file`, if its bytes are the ones cached (the same shared
    /// buffer, as a Git source hands out for an unchanged blob, or equal bytes).
    fn get(&self, file: &FleetFile) -> Option<&FileLoad> {
        let (contents, load) = self.files.get(&file.path)?;
        (Arc::ptr_eq(contents, &file.contents) || contents[..] == file.contents[..]).then_some(load)
    }
}

/// Reads every document of every fleet file. Returns the documents that parsed and one
/// diagnostic per file or document that did not (malformed YAML, unknown kind, wrong
/// `apiVersion`, schema violations); the diagnostics are sorted by file and line.
pub fn load(files: &FleetFiles) -> (Documents, Vec<Diagnostic>) {
    load_cached(files, &mut LoadCache::default())
}

/// [`load`], parsing only the files that are not in `cache` as they are; `cache` then
/// holds exactly `files`.
pub fn load_cached(files: &FleetFiles, cache: &mut LoadCache) -> (Documents, Vec<Diagnostic>) {
    let fresh: Vec<&FleetFile> = files.files().iter().filter(|f| cache.get(f).is_none()).collect();
    let mut parsed = parse_files(&fresh);
    let mut kept = HashMap::with_capacity(files.len());
    for file in files.files() {
        let load = match fresh.binary_search_by(|f| f.path.cmp(&file.path)) {
            Ok(i) => std::mem::take(&mut parsed[i]),
            Err(_) => cache.files.remove(&file.path).expect("an unchanged file is cached").1,
        };
        kept.insert(file.path.clone(), (file.contents.clone(), load));
    }
    cache.files = kept;

    let mut documents = Documents::default();
    let mut diagnostics = Vec::new();
    for file in files.files() {
        let load = &cache.files[&file.path].1;
        diagnostics.extend(load.undecodable.clone());
        for (item, unparsed) in &load.documents {
            documents.unparsed.extend(unparsed.clone());
            match item.clone() {
                Loaded::Group(d) => documents.groups.push(d),
                Loaded::Device(d) => documents.devices.push(d),
                Loaded::DeviceSet(d) => documents.device_sets.push(d),
                Loaded::Release(d) => documents.releases.push(d),
                Loaded::Policy(d) => documents.policies.push(d),
                Loaded::Failed(d) => diagnostics.push(d),
            }
        }
    }
    super::diagnostic::sort(&mut diagnostics);
    (documents, diagnostics)
}

/// Parses `files` (sorted by path), one [`FileLoad`] each, in the same order.
fn parse_files(files: &[&FleetFile]) -> Vec<FileLoad> {
    // Decoding and splitting run per file in parallel, and parsing per document: a large
    // fleet is ~100 MB of text, some files far larger than others.
    let mut loads: Vec<FileLoad> = vec![FileLoad::default(); files.len()];
    let decoded: Vec<Result<FileText<'_>, Diagnostic>> = files
        .par_iter()
        .map(|file| match std::str::from_utf8(&file.contents) {
            Ok(text) => Ok((&file.path, &file.contents, text)),
            Err(e) => {
                let (line, column) = line_column(&file.contents, e.valid_up_to());
                Err(Diagnostic::new(
                    Code::InvalidUtf8,
                    Location { file: file.path.clone(), line, column },
                    format!("file is not valid UTF-8 (invalid byte at offset {})", e.valid_up_to()),
                ))
            }
        })
        .collect();
    let mut texts = Vec::with_capacity(decoded.len());
    for (i, result) in decoded.into_iter().enumerate() {
        match result {
            Ok(text) => texts.push((i, text)),
            Err(diagnostic) => loads[i].undecodable = Some(diagnostic),
        }
    }
    let chunks: Vec<(usize, Chunk<'_>)> = texts
        .par_iter()
        .flat_map_iter(|&(i, (path, bytes, text))| split(path, bytes, text).into_iter().map(move |c| (i, c)))
        .collect();
    let loaded: Vec<(usize, Loaded, Option<Unparsed>)> = chunks
        .par_iter()
        .map(|(i, chunk)| {
            let loaded = load_document(chunk);
            let unparsed = matches!(loaded, Loaded::Failed(_)).then(|| unparsed(chunk)).flatten();
            (*i, loaded, unparsed)
        })
        .collect();
    for (i, item, unparsed) in loaded {
        loads[i].documents.push((item, unparsed));
    }
    loads
}

/// A fleet file's path, shared bytes and text.
type FileText<'a> = (&'a Arc<str>, &'a Arc<[u8]>, &'a str);

/// 1-based line and column (in characters) of a byte offset.
fn line_column(bytes: &[u8], offset: usize) -> (u32, u32) {
    let before = &bytes[..offset];
    let line = before.iter().filter(|&&b| b == b'\n').count() as u32 + 1;
    let line_start = before.iter().rposition(|&b| b == b'\n').map_or(0, |p| p + 1);
    let column = String::from_utf8_lossy(&before[line_start..]).chars().count() as u32 + 1;
    (line, column)
}

/// The envelope fields needed to pick the document's type, read when the fast scan for a
/// top-level `kind:` line finds nothing (flow-style documents, quoted keys).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Header {
    kind: Option<serde_yaml::Value>,
}

fn load_document(chunk: &Chunk<'_>) -> Loaded {
    let text = &chunk.file_text[chunk.start..chunk.end];
    let doc_location = chunk.location();
    let located = |value| chunk.located(value);
    let fail = |code, location, message: String| Loaded::Failed(Diagnostic::new(code, location, message));

    let kind = match scan_kind(text) {
        Some(kind) => Cow::Borrowed(kind),
        None => match serde_yaml::from_str::<Header>(text) {
            Ok(Header { kind: Some(serde_yaml::Value::String(kind)) }) => Cow::Owned(kind),
            Ok(Header { kind: Some(_) }) => {
                let location = located(()).locate("kind");
                return fail(Code::InvalidValue, location, "`kind` must be a string".into());
            }
            Ok(Header { kind: None }) => {
                return fail(Code::NotAnObject, doc_location, "document has no `kind`".into());
            }
            Err(e) => {
                let diagnostic = yaml_error(chunk, text, e);
                if diagnostic.code == Code::MalformedYaml {
                    return Loaded::Failed(diagnostic);
                }
                // Valid YAML that is not a mapping (a scalar or a list).
                return fail(
                    Code::NotAnObject,
                    doc_location,
                    "a fleet document is a mapping with apiVersion, kind, metadata and spec".into(),
                );
            }
        },
    };
    let Some(kind) = Kind::parse(&kind) else {
        let location = located(()).locate("kind");
        let known = Kind::ALL.map(Kind::as_str).join(", ");
        return fail(Code::UnknownKind, location, format!("unknown kind {kind:?} (expected one of {known})"));
    };

    let result = match kind {
        Kind::Group => typed(chunk, text).map(|v| Loaded::Group(chunk.located(v))),
        Kind::Device => typed(chunk, text).map(|v| Loaded::Device(chunk.located(Arc::new(v)))),
        Kind::DeviceSet => device_set(chunk, text).map(|v| Loaded::DeviceSet(chunk.located(Arc::new(v)))),
        Kind::Release => typed(chunk, text).map(|v| Loaded::Release(chunk.located(v))),
        Kind::Policy => typed(chunk, text).map(|v| Loaded::Policy(chunk.located(v))),
    };
    let loaded = match result {
        Ok(loaded) => loaded,
        Err(diagnostic) => return Loaded::Failed(diagnostic),
    };
    let (api_version, actual_kind) = match &loaded {
        Loaded::Group(d) => (&d.value.api_version, &d.value.kind),
        Loaded::Device(d) => (&d.value.api_version, &d.value.kind),
        Loaded::DeviceSet(d) => (&d.value.api_version, &d.value.kind),
        Loaded::Release(d) => (&d.value.api_version, &d.value.kind),
        Loaded::Policy(d) => (&d.value.api_version, &d.value.kind),
        Loaded::Failed(_) => unreachable!("typed documents only"),
    };
    if actual_kind != kind.as_str() {
        // The fast scan saw a `kind:` line that is not the document's kind (e.g. one
        // inside a block scalar); this document needs the careful path.
        let location = located(()).locate("kind");
        return fail(Code::InvalidValue, location, format!("`kind` is {actual_kind:?}, not {kind}"));
    }
    if api_version != API_VERSION {
        let location = located(()).locate("apiVersion");
        return fail(
            Code::UnsupportedApiVersion,
            location,
            format!("unsupported apiVersion {api_version:?} for {kind} (expected {API_VERSION:?})"),
        );
    }
    loaded
}

fn typed<S: DeserializeOwned>(chunk: &Chunk<'_>, text: &str) -> Result<Object<S>, Diagnostic> {
    serde_yaml::from_str::<Object<S>>(text).map_err(|e| yaml_error(chunk, text, e))
}

/// A DeviceSet, its device list read by the fast path when it has the common shape
/// (see [`device_list`]) and the rest by serde_yaml; otherwise, and for every error, the
/// whole document by serde_yaml.
fn device_set(chunk: &Chunk<'_>, text: &str) -> Result<DeviceSet, Diagnostic> {
    if let Some(list) = device_list::read(text) {
        let rest = format!("{}{}", &text[..list.range.start], &text[list.range.end..]);
        if let Ok(mut set) = serde_yaml::from_str::<DeviceSet>(&rest) {
            if set.spec.devices.is_empty() {
                set.spec.devices = list.entries;
                return Ok(set);
            }
        }
    }
    typed(chunk, text)
}

/// The kind and name of a document that failed to load, when its YAML is well-formed
/// enough to tell.
fn unparsed(chunk: &Chunk<'_>) -> Option<Unparsed> {
    #[derive(Deserialize)]
    struct Envelope {
        kind: Option<String>,
        metadata: Option<Metadata>,
    }
    #[derive(Deserialize)]
    struct Metadata {
        name: Option<String>,
    }
    let envelope: Envelope = serde_yaml::from_str(&chunk.file_text[chunk.start..chunk.end]).ok()?;
    Some(Unparsed {
        kind: Kind::parse(&envelope.kind?)?,
        name: envelope.metadata?.name?,
        location: chunk.location(),
    })
}

/// The value of a top-level `kind:` line, if the document has one in block style: the
/// common case, found without parsing.
fn scan_kind(text: &str) -> Option<&str> {
    text.lines().find_map(|line| {
        let value = line.strip_prefix("kind:")?;
        let value = value.split(" #").next().unwrap_or(value).trim();
        let value = value.trim_matches(|c| c == '"' || c == '\'');
        (!value.is_empty()).then_some(value)
    })
}

/// Turns a serde_yaml error into a diagnostic at the file position it refers to.
fn yaml_error(chunk: &Chunk<'_>, text: &str, error: serde_yaml::Error) -> Diagnostic {
    // Syntax errors and schema errors look alike from the outside; a schema-free parse
    // tells them apart. This runs only for documents that failed.
    let syntax = serde_yaml::from_str::<serde::de::IgnoredAny>(text).err();
    let (code, error) = match syntax {
        Some(syntax) => (Code::MalformedYaml, syntax),
        None => (classify(&error.to_string()), error),
    };
    let (message, (line, column)) = message_and_position(chunk, &error);
    Diagnostic::new(code, Location { file: chunk.file.clone(), line, column }, message)
}

/// The code of a serde schema error, from serde's stable message forms.
fn classify(message: &str) -> Code {
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
/// message are rewritten to file lines; an unexpected end of input is reported where the
/// unfinished construct (an unclosed quote or bracket) starts.
fn message_and_position(chunk: &Chunk<'_>, error: &serde_yaml::Error) -> (String, (u32, u32)) {
    let to_file = |(line, column): (u32, u32)| (chunk.first_line + line - 1, column);
    let mut position = error
        .location()
        .map_or((chunk.content_line, 1), |at| to_file((at.line() as u32, at.column() as u32)));
    let text = error.to_string();
    let parts = split_marks(&text);
    let mut message = parts[0].0.to_owned();
    for (context, mark) in &parts[1..] {
        message.push_str(", ");
        message.push_str(context);
        if let Some(mark) = mark {
            let (line, column) = to_file(*mark);
            if parts[0].0.contains("end of stream") {
                position = (line, column);
            } else {
                message.push_str(&format!(" that starts at line {line}, column {column}"));
            }
        }
    }
    (message, position)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(pairs: &[(&str, &str)]) -> FleetFiles {
        FleetFiles::from_pairs(pairs.iter().map(|(p, t)| (*p, t.as_bytes().to_vec())))
    }

    fn codes(diagnostics: &[Diagnostic]) -> Vec<String> {
        diagnostics.iter().map(|d| format!("{} {}", d.code, d.location)).collect()
    }

    const GROUPS: &str = "\
# regions
apiVersion: waveguide.dev/v1alpha1
kind: Group
metadata:
  name: eu
spec:
  labels: {region: eu}
---
apiVersion: waveguide.dev/v1alpha1
kind: Group
metadata: {name: eu-west}
spec:
  parent: eu
  maintenanceWindows:
    - schedule: \"0 2 * * *\"
      duration: 2h
";

    #[test]
    fn a_cached_load_parses_only_changed_files_and_matches_a_full_load() {
        let set = |name: &str, id: &str| {
            format!(
                "apiVersion: waveguide.dev/v1alpha1\nkind: DeviceSet\nmetadata: {{name: {name}}}\nspec:\n  group: eu\n  devices:\n    - id: {id}\n"
            )
        };
        let broken = "apiVersion: waveguide.dev/v1alpha1\nkind: Group\nmetadata: {name: x}\nspec: [\n";
        let (a, b) = (set("a", "a-1"), set("b", "b-1"));
        let first =
            files(&[("groups.yaml", GROUPS), ("a.yaml", &a), ("b.yaml", &b), ("broken.yaml", broken)]);
        let mut cache = LoadCache::default();
        let (docs1, diags1) = load_cached(&first, &mut cache);
        assert_eq!(docs1.device_sets.len(), 2);

        // b changes, broken.yaml and groups.yaml stay, c is new, a is unchanged but read
        // into a new buffer (as from a directory): equal bytes are enough.
        let b2 = set("b", "b-2");
        let c = set("c", "c-1");
        let second = files(&[
            ("groups.yaml", GROUPS),
            ("a.yaml", &a),
            ("b.yaml", &b2),
            ("broken.yaml", broken),
            ("c.yaml", &c),
        ]);
        let (docs2, diags2) = load_cached(&second, &mut cache);
        let (full, full_diags) = load(&second);
        assert_eq!(codes(&diags2), codes(&full_diags));
        assert_eq!(codes(&diags2), codes(&diags1), "the unchanged broken file is still reported");
        let ids = |d: &Documents| -> Vec<String> {
            d.device_sets.iter().map(|s| format!("{}:{}", s.location, s.value.spec.devices[0].id)).collect()
        };
        assert_eq!(ids(&docs2), ids(&full));
        assert_eq!(ids(&docs2), ["a.yaml:1:1:a-1", "b.yaml:1:1:b-2", "c.yaml:1:1:c-1"]);
        assert_eq!(docs2.groups.len(), 2);
        assert!(
            Arc::ptr_eq(&docs1.device_sets[0].value, &docs2.device_sets[0].value),
            "a was not parsed again"
        );
        assert!(!Arc::ptr_eq(&docs1.device_sets[1].value, &docs2.device_sets[1].value));

        // A file removed from the fleet leaves the cache.
        let third = files(&[("groups.yaml", GROUPS), ("c.yaml", &c)]);
        let (docs3, diags3) = load_cached(&third, &mut cache);
        assert!(diags3.is_empty(), "{:?}", codes(&diags3));
        assert_eq!(ids(&docs3), ["c.yaml:1:1:c-1"]);
        assert_eq!(cache.files.len(), 2);
    }

    #[test]
    fn loads_multi_document_files_with_locations() {
        let (docs, diagnostics) = load(&files(&[("groups.yaml", GROUPS)]));
        assert!(diagnostics.is_empty(), "{diagnostics:?}");
        assert_eq!(docs.groups.len(), 2);
        assert_eq!(docs.groups[0].location.to_string(), "groups.yaml:2:1");
        assert_eq!(docs.groups[1].location.to_string(), "groups.yaml:9:1");
        assert_eq!(docs.groups[1].name(), "eu-west");
        assert_eq!(docs.groups[1].locate("spec.parent").to_string(), "groups.yaml:13:11");
        assert_eq!(docs.groups[1].name_location().to_string(), "groups.yaml:11:18");
        assert_eq!(
            docs.groups[1].locate("spec.maintenanceWindows[0].duration").to_string(),
            "groups.yaml:16:17"
        );
        // A defaulted field answers with its deepest existing parent.
        assert_eq!(docs.groups[1].locate("spec.maxConcurrent").to_string(), "groups.yaml:13:3");
    }

    #[test]
    fn every_broken_document_is_reported() {
        let text = "\
apiVersion: waveguide.dev/v1alpha1
kind: Grop
metadata: {name: a}
spec: {}
---
apiVersion: waveguide.dev/v1beta9
kind: Group
metadata: {name: b}
spec: {}
---
apiVersion: waveguide.dev/v1alpha1
kind: Group
metadata: {name: c}
spec:
  parnet: x
---
apiVersion: waveguide.dev/v1alpha1
kind: Device
metadata: {name: d}
spec: {labels: {}}
---
apiVersion: waveguide.dev/v1alpha1
kind: Release
metadata: {name: e}
spec:
  version: [1]
---
apiVersion: waveguide.dev/v1alpha1
kind: Group
metadata: {name: f
spec: {}
---
apiVersion: waveguide.dev/v1alpha1
kind: Group
metadata: {name: ok}
spec: {}
";
        let (docs, diagnostics) = load(&files(&[("all.yaml", text)]));
        assert_eq!(docs.groups.len(), 1, "{diagnostics:?}");
        assert_eq!(
            codes(&diagnostics),
            [
                "WG004 all.yaml:2:7",
                "WG005 all.yaml:6:13",
                "WG007 all.yaml:15:3",
                "WG006 all.yaml:20:7",
                "WG008 all.yaml:26:12",
                "WG002 all.yaml:31:5",
            ]
        );
        assert!(diagnostics[2].message.contains("unknown field `parnet`"), "{}", diagnostics[2].message);
        assert!(diagnostics[3].message.contains("missing field `group`"), "{}", diagnostics[3].message);
    }

    #[test]
    fn flow_style_and_invalid_utf8() {
        let flow = "--- {apiVersion: waveguide.dev/v1alpha1, kind: Release, metadata: {name: r}, spec: {version: 1.0.0}}\n";
        let fleet = FleetFiles::from_pairs([
            ("a.yaml", flow.as_bytes().to_vec()),
            ("b.yaml", b"ok: \xff\n".to_vec()),
        ]);
        let (docs, diagnostics) = load(&fleet);
        assert_eq!(docs.releases.len(), 1);
        assert_eq!(docs.releases[0].location.to_string(), "a.yaml:1:1");
        assert_eq!(codes(&diagnostics), ["WG001 b.yaml:1:5"]);
    }

    #[test]
    fn locates_entries_of_large_lists() {
        let mut text = String::from(
            "apiVersion: waveguide.dev/v1alpha1\nkind: DeviceSet\nmetadata: {name: s}\nspec:\n  group: g\n  devices:\n",
        );
        for i in 0..1000 {
            text.push_str(&format!("    - id: dev-{i:04}\n      labels: {{n: \"{i}\"}}\n"));
        }
        let (docs, diagnostics) = load(&files(&[("set.yaml", "# header\n"), ("z/set.yml", &text)]));
        assert!(diagnostics.is_empty());
        let set = &docs.device_sets[0];
        assert_eq!(set.value.spec.devices.len(), 1000);
        assert_eq!(set.locate("spec.devices[500].id").to_string(), "z/set.yml:1007:11");
        assert_eq!(set.locate("spec.devices[500].labels.n").to_string(), "z/set.yml:1008:19");
    }

    #[test]
    fn syntax_errors_point_at_the_unfinished_construct() {
        let text =
            "apiVersion: waveguide.dev/v1alpha1\nkind: Group\nmetadata: {name: a}\nspec:\n  parent: \"eu\n";
        let (_, diagnostics) =
            load(&files(&[("g.yaml", "# one\n---\n# two\n"), ("h.yaml", &format!("---\n{text}"))]));
        assert_eq!(codes(&diagnostics), ["WG002 h.yaml:6:11"]);
        assert_eq!(diagnostics[0].message, "found unexpected end of stream, while scanning a quoted scalar");
        let (_, diagnostics) = load(&files(&[("m.yaml", "a: b: c\n")]));
        assert_eq!(codes(&diagnostics), ["WG002 m.yaml:1:5"]);
        assert_eq!(diagnostics[0].message, "mapping values are not allowed in this context");
    }

    #[test]
    fn documents_that_are_not_objects() {
        let (_, diagnostics) = load(&files(&[
            ("a.yaml", "just text\n---\n- a list\n---\nmetadata: {name: x}\n"),
            ("b.yaml", "kind: Group\nkind: Group\napiVersion: waveguide.dev/v1alpha1\nmetadata: {name: x}\nspec: {}\n"),
            ("c.yaml", "apiVersion: waveguide.dev/v1alpha1\nkind: Group\nmetadata: {name: x}\nspec:\n  labels: {a: b, a: c}\n"),
        ]));
        assert_eq!(
            codes(&diagnostics),
            [
                "WG003 a.yaml:1:1",
                "WG003 a.yaml:3:1",
                "WG003 a.yaml:5:1",
                "WG009 b.yaml:1:1",
                "WG009 c.yaml:5:11"
            ],
            "{diagnostics:#?}"
        );
    }

    #[test]
    fn crlf_and_byte_order_mark() {
        let text = "\u{feff}apiVersion: waveguide.dev/v1alpha1\r\nkind: Group\r\nmetadata: {name: eu}\r\nspec:\r\n  parent: world\r\n---\r\napiVersion: waveguide.dev/v1alpha1\r\nkind: DeviceSet\r\nmetadata: {name: s}\r\nspec:\r\n  group: eu\r\n  devices:\r\n    - id: a\r\n";
        let (docs, diagnostics) = load(&files(&[("w.yaml", text)]));
        assert!(diagnostics.is_empty(), "{diagnostics:?}");
        assert_eq!(docs.groups[0].locate("spec.parent").to_string(), "w.yaml:5:11");
        assert_eq!(docs.device_sets[0].location.to_string(), "w.yaml:7:1");
        assert_eq!(docs.device_sets[0].value.spec.devices[0].id, "a");
        assert_eq!(docs.device_sets[0].locate("spec.devices[0].id").to_string(), "w.yaml:13:11");
    }

    #[test]
    fn paths_parse() {
        assert_eq!(
            parse_path("spec.waves[2].percent"),
            [Segment::Key("spec"), Segment::Key("waves"), Segment::Index(2), Segment::Key("percent")]
        );
        assert_eq!(parse_path("a[1][2]"), [Segment::Key("a"), Segment::Index(1), Segment::Index(2)]);
    }
}
