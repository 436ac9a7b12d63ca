//! Every broken example repository under `examples/invalid/` produces exactly the
//! expected diagnostics: code, file and line of each, nothing more. `docs/errors.md`
//! shows the real `waveguide validate` output for each scenario; this test also fails
//! when the documentation no longer matches.

use waveguide::compile::{self, diagnostic};
use waveguide::source;
use waveguide_tests::repo_root;

/// One expected diagnostic: code, file (relative to the scenario) and line.
type Expected = (&'static str, &'static str, u32);

/// `(scenario, diagnostics)`, the diagnostics in report order.
const SCENARIOS: &[(&str, &[Expected])] = &[
    ("malformed-yaml", &[("WG002", "groups.yaml", 18), ("WG002", "releases.yaml", 11)]),
    (
        "schema-violations",
        &[
            ("WG006", "devices.yaml", 6),
            ("WG004", "devices.yaml", 10),
            ("WG007", "groups.yaml", 15),
            ("WG008", "groups.yaml", 23),
            ("WG005", "groups.yaml", 25),
            ("WG008", "policies.yaml", 10),
        ],
    ),
    (
        "duplicates",
        &[
            ("WG103", "devices.yaml", 16),
            ("WG103", "devices.yaml", 18),
            ("WG101", "groups.yaml", 17),
            ("WG102", "more-groups.yaml", 5),
        ],
    ),
    (
        "dangling-references",
        &[
            ("WG105", "devices.yaml", 6),
            ("WG106", "devices.yaml", 10),
            ("WG105", "fleet.yaml", 14),
            ("WG106", "fleet.yaml", 15),
            ("WG104", "groups.yaml", 19),
        ],
    ),
    ("group-cycle", &[("WG107", "groups.yaml", 8), ("WG107", "groups.yaml", 29)]),
    (
        "bad-waves",
        &[
            ("WG207", "policies.yaml", 12),
            ("WG209", "policies.yaml", 13),
            ("WG208", "policies.yaml", 16),
            ("WG210", "policies.yaml", 30),
            ("WG206", "policies.yaml", 33),
            ("WG203", "policies.yaml", 34),
        ],
    ),
    (
        "bad-values",
        &[
            ("WG109", "devices.yaml", 8),
            ("WG213", "devices.yaml", 11),
            ("WG108", "devices.yaml", 12),
            ("WG202", "groups.yaml", 10),
            ("WG203", "groups.yaml", 11),
            ("WG204", "groups.yaml", 12),
            ("WG212", "groups.yaml", 14),
            ("WG201", "releases.yaml", 6),
            ("WG205", "releases.yaml", 9),
            ("WG205", "releases.yaml", 13),
            ("WG211", "releases.yaml", 19),
            ("WG215", "releases.yaml", 20),
            ("WG212", "releases.yaml", 21),
        ],
    ),
    ("policy-conflict", &[("WG301", "policies.yaml", 20)]),
    ("rollout-rules", &[("WG203", "policies.yaml", 10), ("WG210", "policies.yaml", 15)]),
    ("incompatible-release", &[("WG302", "fleet.yaml", 19), ("WG302", "fleet.yaml", 41)]),
    ("warnings-only", &[("WG304", "fleet.yaml", 14), ("WG303", "fleet.yaml", 37)]),
    // Links to a file outside the repository, to itself, and to a directory: none is
    // followed.
    ("symbolic-links", &[("WG010", "loop.yaml", 1), ("WG010", "passwd.yaml", 1), ("WG011", "shared", 1)]),
    ("limits", &[("WG013", "deep.yaml", 8), ("WG216", "devices.yaml", 11), ("WG217", "devices.yaml", 23)]),
    (
        "positions",
        &[
            ("WG002", "control.yaml", 8),
            ("WG002", "eof.yaml", 7),
            ("WG002", "groups.yaml", 9),
            ("WG009", "keys.yaml", 10),
            ("WG109", "keys.yaml", 19),
            ("WG008", "keys.yaml", 23),
        ],
    ),
];

fn compile_scenario(scenario: &str) -> compile::Compilation {
    let dir = repo_root().join("examples/invalid").join(scenario);
    let files = source::read_dir(&dir).unwrap_or_else(|e| panic!("{scenario}: {e}"));
    compile::compile(&files)
}

#[test]
fn every_scenario_reports_exactly_its_errors() {
    let mut failures = Vec::new();
    for (scenario, expected) in SCENARIOS {
        let compilation = compile_scenario(scenario);
        let actual: Vec<(String, String, u32)> = compilation
            .diagnostics
            .iter()
            .map(|d| (d.code.to_string(), d.location.file.to_string(), d.location.line))
            .collect();
        let expected: Vec<(String, String, u32)> =
            expected.iter().map(|(c, f, l)| (c.to_string(), f.to_string(), *l)).collect();
        if actual != expected {
            failures.push(format!(
                "{scenario}:\n  expected {expected:?}\n  actual   {actual:?}\n{}",
                diagnostic::render(&compilation.diagnostics, diagnostic::Format::Text, scenario)
            ));
        }
        let errors_expected = expected.iter().any(|(code, _, _)| !is_warning(code));
        assert_eq!(compilation.has_errors(), errors_expected, "{scenario}");
        assert_eq!(compilation.fleet.is_some(), !errors_expected, "{scenario}: a fleet only without errors");
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn is_warning(code: &str) -> bool {
    diagnostic::Code::ALL.iter().any(|c| c.as_str() == code && c.severity() == diagnostic::Severity::Warning)
}

#[test]
fn every_scenario_directory_is_in_the_table() {
    let dir = repo_root().join("examples/invalid");
    let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    on_disk.sort();
    let mut listed: Vec<String> = SCENARIOS.iter().map(|(s, _)| s.to_string()).collect();
    listed.sort();
    assert_eq!(on_disk, listed);
}

#[test]
fn every_error_code_is_documented() {
    let docs = std::fs::read_to_string(repo_root().join("docs/errors.md")).unwrap();
    for code in diagnostic::Code::ALL {
        assert!(
            docs.contains(&format!("## {code} ")),
            "docs/errors.md has no section `## {code} …` for {code} ({})",
            code.summary()
        );
    }
}

#[test]
fn docs_show_the_real_output() {
    let docs = std::fs::read_to_string(repo_root().join("docs/errors.md")).unwrap();
    for (scenario, _) in SCENARIOS {
        let compilation = compile_scenario(scenario);
        let root = format!("examples/invalid/{scenario}");
        let output = diagnostic::render(&compilation.diagnostics, diagnostic::Format::Text, &root);
        let block = format!("$ waveguide validate {root}\n{output}```");
        assert!(
            docs.contains(&block),
            "docs/errors.md does not show the current output for {scenario}; it is:\n\n```console\n{block}\n"
        );
    }
}
