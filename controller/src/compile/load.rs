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
mod envelope;
mod locate;
mod scan;
mod split;
mod yaml_error;

pub use locate::key_segment;

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use rayon::prelude::*;
use serde::de::DeserializeOwned;
use serde::{Serialize, Serializer};

use super::diagnostic::{Code, Diagnostic};
use super::limits::{self, MAX_DEVICES_PER_SET, MAX_DOCUMENT_BYTES, MAX_NESTING_DEPTH};
use crate::model::{Device, DeviceSet, Group, Kind, Object, Policy, Release, API_VERSION};
use crate::source::{FleetFile, FleetFiles};
use locate::{locate_in, parse_path, Target};
use split::{split, Chunk};

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
        self.find(path, Target::Value)
    }

    /// The location of the key that ends `path` (see [`Located::locate`]), rather than
    /// of its value: where a key itself is wrong, such as an invalid label key
    /// (`spec.labels["-bad"]`). With `occurrence` 1, its second occurrence in the
    /// mapping, where a key written twice is wrong.
    pub fn locate_key(&self, path: &str, occurrence: usize) -> Location {
        self.find(path, Target::Key(occurrence))
    }

    fn find(&self, path: &str, target: Target) -> Location {
        let Some(text) = &self.text else { return self.location.clone() };
        // Chunks start and end at line breaks of valid UTF-8, so this always succeeds.
        let Ok(doc) = std::str::from_utf8(&text.file_bytes[text.start..text.end]) else {
            return self.location.clone();
        };
        match locate_in(doc, &parse_path(path), target) {
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
    let mut diagnostics: Vec<Diagnostic> = files.links().iter().map(link_diagnostic).collect();
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
        .map(|(i, chunk)| match load_document(chunk) {
            Ok(loaded) => (*i, loaded, None),
            Err(failed) => {
                let unparsed = failed.unparsed(chunk);
                (*i, Loaded::Failed(failed.diagnostic), unparsed)
            }
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

/// The diagnostic for a symbolic link found in the fleet directory: an error where a
/// fleet file was expected, a warning otherwise (it may be a directory of fleet files).
fn link_diagnostic(link: &Arc<str>) -> Diagnostic {
    let location = Location { file: link.clone(), line: 1, column: 1 };
    if crate::source::is_fleet_file(link) {
        Diagnostic::new(
            Code::SymbolicLink,
            location,
            "a fleet file may not be a symbolic link: links are not followed, so this file is not read",
        )
    } else {
        Diagnostic::new(
            Code::IgnoredSymbolicLink,
            location,
            "symbolic link not followed: if it leads to fleet files, they are not read",
        )
    }
}

/// A document that did not load: what is wrong, and what could be read of it.
struct Failed {
    diagnostic: Diagnostic,
    /// Its kind and name, when readable.
    envelope: Option<(Kind, String)>,
}

impl Failed {
    /// A failure; the kind and name are read from the text when `envelope` is `None`.
    fn new(diagnostic: Diagnostic) -> Failed {
        Failed { diagnostic, envelope: None }
    }

    fn with_envelope(mut self, envelope: &envelope::Envelope) -> Failed {
        if let (Some(envelope::Scalar::Str(kind)), Some(name)) = (&envelope.kind, &envelope.name) {
            self.envelope = Kind::parse(kind).map(|kind| (kind, name.clone()));
        }
        self
    }

    fn unparsed(&self, chunk: &Chunk<'_>) -> Option<Unparsed> {
        let (kind, name) = match &self.envelope {
            Some(envelope) => envelope.clone(),
            None => {
                let (kind, name) = scan::envelope(chunk.text())?;
                (Kind::parse(kind)?, name.to_owned())
            }
        };
        Some(Unparsed { kind, name, location: chunk.location() })
    }
}

/// Loads one document: checked before parsing, then parsed by its kind. A document
/// that loads is parsed once; one that fails at most twice (the second time without
/// its schema, to tell a syntax error from a schema error and to read its kind and
/// name).
fn load_document(chunk: &Chunk<'_>) -> Result<Loaded, Failed> {
    let text = chunk.text();
    let fail = |code, location, message: String| Failed::new(Diagnostic::new(code, location, message));
    // A DeviceSet's device list in the common shape is read without the parser, and
    // that shape nests no deeper than a label map: only the rest needs the depth scan.
    let list = (scan::kind(text) == Some("DeviceSet")).then(|| device_list::read(text)).flatten();
    if let Err(refusal) = scan::check(text, list.as_ref().map(|l| l.range.clone())) {
        let at = |offset: usize| {
            let (line, column) = line_column(text.as_bytes(), offset);
            Location { file: chunk.file.clone(), line: chunk.first_line + line - 1, column }
        };
        return Err(match refusal {
            scan::Refusal::TooLarge => fail(
                Code::DocumentTooLarge,
                chunk.location(),
                format!("document of {} bytes is larger than the limit of {MAX_DOCUMENT_BYTES}", text.len()),
            ),
            scan::Refusal::TooDeep { offset } => fail(
                Code::NestingTooDeep,
                at(offset),
                format!("collections nest deeper than the limit of {MAX_NESTING_DEPTH} levels"),
            ),
            scan::Refusal::Forbidden { offset, character } => fail(
                Code::MalformedYaml,
                at(offset),
                format!("control character U+{:04X} is not allowed in YAML", character as u32),
            ),
        });
    }

    // The common case: a plain `kind:` line names a known kind, and the typed parse is
    // the only one.
    if let Some(kind) = scan::kind(text).and_then(Kind::parse) {
        return match parse_kind(chunk, kind, list) {
            Ok(loaded) => check_envelope(chunk, kind, loaded),
            // A document over a limit parsed well: its name is known, no second parse.
            Err(ParseError::Limit { diagnostic, name }) => {
                Err(Failed { diagnostic, envelope: Some((kind, name)) })
            }
            Err(error) => Err(match envelope::read(text) {
                Err(syntax) => Failed::new(yaml_error::syntax_error(chunk, &syntax)),
                Ok(envelope) => Failed::new(error.into_diagnostic(chunk)).with_envelope(&envelope),
            }),
        };
    }

    // Otherwise (a flow-style document, an odd `kind`) read the envelope first.
    let envelope = envelope::read(text).map_err(|e| Failed::new(yaml_error::syntax_error(chunk, &e)))?;
    let kind = match &envelope.kind {
        _ if !envelope.mapping => {
            return Err(fail(
                Code::NotAnObject,
                chunk.location(),
                "a fleet document is a mapping with apiVersion, kind, metadata and spec".into(),
            ))
        }
        None => return Err(fail(Code::NotAnObject, chunk.location(), "document has no `kind`".into())),
        Some(envelope::Scalar::Other) => {
            let location = chunk.located(()).locate("kind");
            return Err(fail(Code::InvalidValue, location, "`kind` must be a string".into()));
        }
        Some(envelope::Scalar::Str(kind)) => kind,
    };
    let Some(kind) = Kind::parse(kind) else {
        let location = chunk.located(()).locate("kind");
        let known = Kind::ALL.map(Kind::as_str).join(", ");
        return Err(fail(
            Code::UnknownKind,
            location,
            format!("unknown kind {kind:?} (expected one of {known})"),
        ));
    };
    match parse_kind(chunk, kind, list) {
        Ok(loaded) => check_envelope(chunk, kind, loaded),
        Err(error) => Err(Failed::new(error.into_diagnostic(chunk)).with_envelope(&envelope)),
    }
}

/// Checks what the typed parse read of the envelope: the kind that chose the type (a
/// `kind:` line inside a block scalar could have misled the scan) and the apiVersion.
fn check_envelope(chunk: &Chunk<'_>, kind: Kind, loaded: Loaded) -> Result<Loaded, Failed> {
    let (api_version, actual_kind) = match &loaded {
        Loaded::Group(d) => (&d.value.api_version, &d.value.kind),
        Loaded::Device(d) => (&d.value.api_version, &d.value.kind),
        Loaded::DeviceSet(d) => (&d.value.api_version, &d.value.kind),
        Loaded::Release(d) => (&d.value.api_version, &d.value.kind),
        Loaded::Policy(d) => (&d.value.api_version, &d.value.kind),
        Loaded::Failed(_) => unreachable!("typed documents only"),
    };
    let failed = |code, path, message| {
        let diagnostic = Diagnostic::new(code, chunk.located(()).locate(path), message);
        Err(Failed { diagnostic, envelope: None })
    };
    if actual_kind != kind.as_str() {
        return failed(Code::InvalidValue, "kind", format!("`kind` is {actual_kind:?}, not {kind}"));
    }
    if api_version != API_VERSION {
        return failed(
            Code::UnsupportedApiVersion,
            "apiVersion",
            format!("unsupported apiVersion {api_version:?} for {kind} (expected {API_VERSION:?})"),
        );
    }
    Ok(loaded)
}

/// Why a typed parse failed.
enum ParseError {
    /// serde_yaml's error, with its position.
    Yaml(serde_yaml::Error),
    /// An error in a document read through a [`serde_yaml::Value`] (merge keys).
    Value(serde_path_to_error::Error<serde_yaml::Error>),
    /// A document that parsed but is over a limit (a DeviceSet with too many devices).
    Limit { diagnostic: Diagnostic, name: String },
}

impl ParseError {
    fn into_diagnostic(self, chunk: &Chunk<'_>) -> Diagnostic {
        match self {
            ParseError::Yaml(e) => yaml_error::schema_error(chunk, &e),
            ParseError::Value(e) => yaml_error::value_error(chunk, &e),
            ParseError::Limit { diagnostic, .. } => diagnostic,
        }
    }
}

/// Parses the document as `kind`; `list` is a DeviceSet's device list, when the fast
/// path read it.
fn parse_kind(
    chunk: &Chunk<'_>,
    kind: Kind,
    list: Option<device_list::DeviceList>,
) -> Result<Loaded, ParseError> {
    let text = chunk.text();
    Ok(match kind {
        Kind::Group => Loaded::Group(chunk.located(typed(text)?)),
        Kind::Device => Loaded::Device(chunk.located(Arc::new(typed(text)?))),
        Kind::DeviceSet => Loaded::DeviceSet(chunk.located(Arc::new(device_set(chunk, text, list)?))),
        Kind::Release => Loaded::Release(chunk.located(typed(text)?)),
        Kind::Policy => Loaded::Policy(chunk.located(typed(text)?)),
    })
}

/// Parses a document into its type. YAML merge keys (`<<: *defaults`) are applied first,
/// on a [`serde_yaml::Value`]: serde_yaml's typed parse does not know them.
fn typed<T: DeserializeOwned>(text: &str) -> Result<T, ParseError> {
    if !text.contains("<<") {
        return serde_yaml::from_str(text).map_err(ParseError::Yaml);
    }
    let mut value: serde_yaml::Value = serde_yaml::from_str(text).map_err(ParseError::Yaml)?;
    value.apply_merge().map_err(ParseError::Yaml)?;
    serde_path_to_error::deserialize(value).map_err(ParseError::Value)
}

/// A DeviceSet, its device list read by the fast path when it has the common shape
/// (see [`device_list`]) and the rest by serde_yaml; otherwise, and for every error, the
/// whole document by serde_yaml. Its size is checked without expanding its range.
fn device_set(
    chunk: &Chunk<'_>,
    text: &str,
    list: Option<device_list::DeviceList>,
) -> Result<DeviceSet, ParseError> {
    let mut fast = None;
    if let Some(list) = list {
        let rest = format!("{}{}", &text[..list.range.start], &text[list.range.end..]);
        if let Ok(mut set) = typed::<DeviceSet>(&rest) {
            if set.spec.devices.is_empty() {
                set.spec.devices = list.entries;
                fast = Some(set);
            }
        }
    }
    let set = match fast {
        Some(set) => set,
        None => typed(text)?,
    };
    let limit = |path: &str, code, message| {
        let diagnostic = Diagnostic::new(code, chunk.located(()).locate(path), message);
        Err(ParseError::Limit { diagnostic, name: set.metadata.name.clone() })
    };
    let ranged = match &set.spec.range {
        Some(range) => match limits::range_size(range) {
            Ok(n) => n,
            Err(overflow) => return limit("spec.range.count", Code::RangeOverflow, overflow.to_string()),
        },
        None => 0,
    };
    let listed = set.spec.devices.len() as u64;
    if listed + ranged > MAX_DEVICES_PER_SET {
        let path = if ranged > 0 { "spec.range.count" } else { "spec.devices" };
        let message = format!(
            "the DeviceSet declares {} devices, more than the limit of {MAX_DEVICES_PER_SET}; split it",
            listed + ranged
        );
        return limit(path, Code::TooManyDevices, message);
    }
    Ok(set)
}

#[cfg(test)]
mod tests;
