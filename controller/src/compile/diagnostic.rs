//! Diagnostics: what the compiler reports about a fleet repository.
//!
//! Every diagnostic carries a stable [`Code`] (`WG104`), a [`Severity`], the file, line
//! and column it is about, and a message. Codes never change meaning once published: CI
//! scripts and the documentation (`docs/errors.md`) refer to them. A diagnostic renders as
//! compiler-style text, as JSON, or as GitHub Actions workflow annotations.

use std::cmp::Ordering;
use std::fmt::{self, Write as _};
use std::sync::Arc;

use serde::{Serialize, Serializer};

use super::load::Location;

/// How bad a diagnostic is. Errors stop a commit from being published; warnings don't.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

impl Severity {
    /// `error` or `warning`.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

macro_rules! codes {
    ($( $(#[doc = $doc:literal])+ $variant:ident = $code:literal, $severity:ident; )+) => {
        /// Stable diagnostic codes. `WG0xx`: reading documents; `WG1xx`: names and
        /// references; `WG2xx`: field values (versions, schedules, waves, selectors);
        /// `WG3xx`: resolving policies over the fleet. Each is documented in
        /// `docs/errors.md`.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        #[non_exhaustive]
        pub enum Code {
            $( $(#[doc = $doc])+ $variant, )+
        }

        impl Code {
            /// Every code, in numeric order.
            pub const ALL: &'static [Code] = &[$(Code::$variant),+];

            /// The stable code, e.g. `WG104`.
            pub fn as_str(self) -> &'static str {
                match self { $( Code::$variant => $code, )+ }
            }

            /// The severity diagnostics with this code have.
            pub fn severity(self) -> Severity {
                match self { $( Code::$variant => Severity::$severity, )+ }
            }

            /// One line saying what the code means.
            pub fn summary(self) -> &'static str {
                match self { $( Code::$variant => codes!(@first $($doc)+).trim(), )+ }
            }
        }
    };
    (@first $first:literal $($rest:literal)*) => { $first };
}

codes! {
    /// The file is not valid UTF-8.
    InvalidUtf8 = "WG001", Error;
    /// The YAML is malformed: a syntax error, bad indentation, an unclosed quote.
    MalformedYaml = "WG002", Error;
    /// A document is not a mapping with `apiVersion`, `kind`, `metadata` and `spec`.
    NotAnObject = "WG003", Error;
    /// The `kind` is not one of Group, Device, DeviceSet, Release, Policy.
    UnknownKind = "WG004", Error;
    /// The `apiVersion` is not `waveguide.dev/v1alpha1`.
    UnsupportedApiVersion = "WG005", Error;
    /// A required field is missing.
    MissingField = "WG006", Error;
    /// A field that the kind does not have (often a typo).
    UnknownField = "WG007", Error;
    /// A field has the wrong type or a value outside its allowed set.
    InvalidValue = "WG008", Error;
    /// A mapping holds the same key twice.
    DuplicateKey = "WG009", Error;
    /// A fleet file (`*.yaml`, `*.yml`) is a symbolic link: links are never followed.
    SymbolicLink = "WG010", Error;
    /// A symbolic link in the fleet directory is not followed: nothing under it is read.
    IgnoredSymbolicLink = "WG011", Warning;
    /// A document is larger than the limit (256 MiB).
    DocumentTooLarge = "WG012", Error;
    /// Collections nest deeper than the limit (64 levels).
    NestingTooDeep = "WG013", Error;
    /// A name is not a DNS-1123 label.
    InvalidName = "WG101", Error;
    /// Two documents of one kind have the same name.
    DuplicateName = "WG102", Error;
    /// One device id is declared twice (by Devices and/or DeviceSets).
    DuplicateDeviceId = "WG103", Error;
    /// A group's parent is not a declared group.
    UnknownParent = "WG104", Error;
    /// A device, device set or policy names a group that is not declared.
    UnknownGroup = "WG105", Error;
    /// A policy or pin names a release that is not declared.
    UnknownRelease = "WG106", Error;
    /// The group hierarchy has a cycle.
    GroupCycle = "WG107", Error;
    /// A device id is not valid (letters, digits, `.`, `_`, `-`; at most 128).
    InvalidDeviceId = "WG108", Error;
    /// A label key or value is not valid Kubernetes label syntax.
    InvalidLabel = "WG109", Error;
    /// A release version is not a semantic version.
    InvalidVersion = "WG201", Error;
    /// A maintenance window schedule is not a valid cron expression.
    InvalidSchedule = "WG202", Error;
    /// A duration (window length, bake time) cannot be read.
    InvalidDuration = "WG203", Error;
    /// A time zone is not an IANA time zone name.
    InvalidTimeZone = "WG204", Error;
    /// A selector requirement has the wrong values for its operator.
    InvalidSelector = "WG205", Error;
    /// The waves' percentages add up to more than 100.
    WavePercentOverflow = "WG206", Error;
    /// A wave can hold no device (`count: 0` or `percent: 0`).
    EmptyWave = "WG207", Error;
    /// A wave without `count` or `percent` ("all the rest") is not the last wave.
    OpenWaveNotLast = "WG208", Error;
    /// A wave sets both `count` and `percent`.
    AmbiguousWave = "WG209", Error;
    /// A rollout threshold is outside 0–100, or success does not exceed failure.
    InvalidThreshold = "WG210", Error;
    /// A release lists two artifacts with the same name.
    DuplicateArtifact = "WG211", Error;
    /// A SHA-256 digest is not 64 lower-case hex digits.
    InvalidDigest = "WG212", Error;
    /// A public key is not a base64 ed25519 key (32 bytes).
    InvalidPublicKey = "WG213", Error;
    /// A count that must be positive is zero (`maxConcurrent`, a device range's `count`).
    ZeroCount = "WG214", Error;
    /// An artifact URL is not an absolute URL.
    InvalidUrl = "WG215", Error;
    /// A DeviceSet or the whole fleet declares more devices than the limit.
    TooManyDevices = "WG216", Error;
    /// A device range runs past the largest device number.
    RangeOverflow = "WG217", Error;
    /// Two equal-priority policies give one device different releases.
    PolicyConflict = "WG301", Error;
    /// A release's `compatible` selector excludes devices its policy selects.
    IncompatibleRelease = "WG302", Error;
    /// A policy selects no device.
    PolicySelectsNothing = "WG303", Warning;
    /// Devices that no policy covers and that have no pin.
    DeviceNotCovered = "WG304", Warning;
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Code {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// A secondary place a diagnostic refers to, e.g. where a duplicate was first declared.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Note {
    /// Where.
    #[serde(flatten)]
    pub location: Location,
    /// What is there, e.g. `first declared here`.
    pub message: String,
}

/// One finding about a fleet repository.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    /// The stable code.
    pub code: Code,
    /// Error or warning; follows from the code.
    pub severity: Severity,
    /// File (relative to the fleet root), line and column, all 1-based.
    #[serde(flatten)]
    pub location: Location,
    /// What is wrong, naming the things involved.
    pub message: String,
    /// Other places involved, e.g. the first declaration of a duplicate.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<Note>,
}

impl Diagnostic {
    /// A diagnostic with the code's severity.
    pub fn new(code: Code, location: Location, message: impl Into<String>) -> Diagnostic {
        Diagnostic { code, severity: code.severity(), location, message: message.into(), notes: Vec::new() }
    }

    /// Adds a secondary location.
    pub fn with_note(mut self, location: Location, message: impl Into<String>) -> Diagnostic {
        self.notes.push(Note { location, message: message.into() });
        self
    }

    /// True for errors.
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }

    /// The file the diagnostic is about.
    pub fn file(&self) -> &Arc<str> {
        &self.location.file
    }

    /// The order reports use: by file, line, column, then code and message so that the
    /// output is deterministic.
    pub fn report_order(a: &Diagnostic, b: &Diagnostic) -> Ordering {
        a.location.cmp(&b.location).then(a.code.cmp(&b.code)).then_with(|| a.message.cmp(&b.message))
    }
}

/// Sorts diagnostics into report order (file, then line, then column) and drops exact
/// duplicates.
pub fn sort(diagnostics: &mut Vec<Diagnostic>) {
    diagnostics.sort_by(Diagnostic::report_order);
    diagnostics.dedup();
}

/// True when any diagnostic is an error.
pub fn has_errors(diagnostics: &[Diagnostic]) -> bool {
    diagnostics.iter().any(Diagnostic::is_error)
}

/// How diagnostics are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// Compiler-style text for people.
    #[default]
    Text,
    /// One JSON document: `{"diagnostics": [...], "errors": n, "warnings": n}`.
    Json,
    /// GitHub Actions workflow commands (`::error file=…,line=…::…`).
    Github,
}

/// Renders diagnostics in `format`. `root` (the fleet directory as the user named it)
/// is prefixed to file names, so that editors and GitHub find the files from where the
/// command ran; `""` or `"."` leaves them relative to the fleet root.
pub fn render(diagnostics: &[Diagnostic], format: Format, root: &str) -> String {
    let shown: Vec<Diagnostic>;
    let diagnostics = if root.is_empty() || root == "." || root == "./" {
        diagnostics
    } else {
        let root = root.trim_end_matches('/');
        let prefix = |location: &mut Location| location.file = format!("{root}/{}", location.file).into();
        shown = diagnostics
            .iter()
            .cloned()
            .map(|mut d| {
                prefix(&mut d.location);
                d.notes.iter_mut().for_each(|n| prefix(&mut n.location));
                d
            })
            .collect();
        &shown
    };
    match format {
        Format::Text => render_text(diagnostics),
        Format::Json => render_json(diagnostics),
        Format::Github => render_github(diagnostics),
    }
}

/// Renders an error that stopped the command before anything was checked (the fleet
/// could not be read) in `format`, so that tools reading JSON or GitHub annotations see
/// it too: text `error: …`, JSON `{"errors": 1, "warnings": 0, "diagnostics": [],
/// "fatal": "…"}`, a GitHub `::error` annotation without a file.
pub fn render_fatal(message: &str, format: Format) -> String {
    match format {
        Format::Text => format!("error: {message}\n"),
        Format::Json => {
            let report = serde_json::json!({"errors": 1, "warnings": 0, "diagnostics": [], "fatal": message});
            format!("{report:#}\n")
        }
        Format::Github => format!("::error title=waveguide::{}\n", escape_data(message)),
    }
}

fn counts(diagnostics: &[Diagnostic]) -> (usize, usize) {
    let errors = diagnostics.iter().filter(|d| d.is_error()).count();
    (errors, diagnostics.len() - errors)
}

fn plural(n: usize, word: &str) -> String {
    if n == 1 {
        format!("{n} {word}")
    } else {
        format!("{n} {word}s")
    }
}

/// `error[WG104]: unknown parent group "eu-west"` / `  --> groups/sites.yaml:12:11`, one
/// block per diagnostic, then a summary line.
fn render_text(diagnostics: &[Diagnostic]) -> String {
    let mut out = String::new();
    for d in diagnostics {
        let _ = writeln!(out, "{}[{}]: {}", d.severity, d.code, d.message);
        let _ = writeln!(out, "  --> {}", d.location);
        for note in &d.notes {
            let _ = writeln!(out, "   = note: {} ({})", note.message, note.location);
        }
        out.push('\n');
    }
    let (errors, warnings) = counts(diagnostics);
    if errors == 0 && warnings == 0 {
        out.push_str("ok: no errors, no warnings\n");
    } else {
        let _ = writeln!(out, "{}, {}", plural(errors, "error"), plural(warnings, "warning"));
    }
    out
}

fn render_json(diagnostics: &[Diagnostic]) -> String {
    #[derive(Serialize)]
    struct Report<'a> {
        errors: usize,
        warnings: usize,
        diagnostics: &'a [Diagnostic],
    }
    let (errors, warnings) = counts(diagnostics);
    let mut out = serde_json::to_string_pretty(&Report { errors, warnings, diagnostics })
        .expect("diagnostics serialise to JSON");
    out.push('\n');
    out
}

/// A workflow command's message: `%`, CR and LF escaped.
fn escape_data(s: &str) -> String {
    s.replace('%', "%25").replace('\r', "%0D").replace('\n', "%0A")
}

/// Workflow commands: properties escape `%`, CR, LF, `:` and `,`; the message escapes
/// `%`, CR and LF (GitHub's own rules for `::error`).
fn render_github(diagnostics: &[Diagnostic]) -> String {
    fn escape_property(s: &str) -> String {
        escape_data(s).replace(':', "%3A").replace(',', "%2C")
    }
    let mut out = String::new();
    for d in diagnostics {
        let mut message = d.message.clone();
        for note in &d.notes {
            let _ = write!(message, "\nnote: {} ({})", note.message, note.location);
        }
        let _ = writeln!(
            out,
            "::{} file={},line={},col={},title={}::{}",
            d.severity,
            escape_property(&d.location.file),
            d.location.line,
            d.location.column,
            escape_property(&format!("{} {}", d.code, d.code.summary().trim_end_matches('.'))),
            escape_data(&message)
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(file: &str, line: u32, column: u32) -> Location {
        Location { file: file.into(), line, column }
    }

    #[test]
    fn codes_are_unique_and_well_formed() {
        let mut seen = std::collections::BTreeSet::new();
        for code in Code::ALL {
            let s = code.as_str();
            assert!(s.len() == 5 && s.starts_with("WG") && s[2..].bytes().all(|b| b.is_ascii_digit()), "{s}");
            assert!(seen.insert(s), "{s} twice");
            assert!(!code.summary().is_empty());
        }
    }

    #[test]
    fn sorted_by_file_then_line() {
        let mut ds = vec![
            Diagnostic::new(Code::UnknownGroup, at("b.yaml", 1, 1), "x"),
            Diagnostic::new(Code::UnknownParent, at("a.yaml", 12, 3), "y"),
            Diagnostic::new(Code::UnknownParent, at("a.yaml", 2, 9), "z"),
            Diagnostic::new(Code::UnknownParent, at("a.yaml", 2, 9), "z"),
        ];
        sort(&mut ds);
        let order: Vec<_> = ds.iter().map(|d| d.location.to_string()).collect();
        assert_eq!(order, ["a.yaml:2:9", "a.yaml:12:3", "b.yaml:1:1"]);
    }

    #[test]
    fn text_looks_like_a_compiler() {
        let d = Diagnostic::new(
            Code::UnknownParent,
            at("groups/sites.yaml", 12, 11),
            "unknown parent group \"eu-west\"",
        );
        let text = render(&[d], Format::Text, ".");
        assert_eq!(
            text,
            "error[WG104]: unknown parent group \"eu-west\"\n  --> groups/sites.yaml:12:11\n\n1 error, 0 warnings\n"
        );
    }

    #[test]
    fn github_annotations_escape() {
        let d = Diagnostic::new(Code::PolicySelectsNothing, at("p,1.yaml", 3, 1), "50% of\nnothing");
        let out = render(&[d], Format::Github, "fleet");
        assert_eq!(
            out,
            "::warning file=fleet/p%2C1.yaml,line=3,col=1,title=WG303 A policy selects no device::50%25 of%0Anothing\n"
        );
    }

    #[test]
    fn json_has_code_and_location() {
        let d = Diagnostic::new(Code::GroupCycle, at("g.yaml", 4, 2), "cycle")
            .with_note(at("h.yaml", 1, 1), "next");
        let v: serde_json::Value = serde_json::from_str(&render(&[d], Format::Json, ".")).unwrap();
        assert_eq!(v["errors"], 1);
        assert_eq!(v["diagnostics"][0]["code"], "WG107");
        assert_eq!(v["diagnostics"][0]["file"], "g.yaml");
        assert_eq!(v["diagnostics"][0]["line"], 4);
        assert_eq!(v["diagnostics"][0]["notes"][0]["file"], "h.yaml");
    }
}
