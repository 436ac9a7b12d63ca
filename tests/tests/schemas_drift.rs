//! The committed JSON Schemas under `schemas/` are exactly what the code generates, and
//! `waveguide schemas` writes them.

use std::fs;
use waveguide_tests::{repo_root, waveguide};

const REGENERATE: &str =
    "regenerate them with `cargo run -p waveguide -- schemas --out schemas` and commit the result";

#[test]
fn committed_schemas_match_the_model() {
    let dir = repo_root().join("schemas");
    let generated = waveguide::model::schema::files();
    for (name, text) in &generated {
        let committed = fs::read_to_string(dir.join(name)).unwrap_or_default();
        assert!(committed == *text, "schemas/{name} differs from the model types: {REGENERATE}");
    }
    let mut on_disk: Vec<String> =
        fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    on_disk.sort();
    let mut expected: Vec<String> = generated.into_iter().map(|(name, _)| name).collect();
    expected.sort();
    assert_eq!(on_disk, expected, "schemas/ holds files the model does not generate: {REGENERATE}");
}

#[test]
fn the_cli_writes_the_same_files() {
    let out = tempfile::tempdir().unwrap();
    let status = waveguide().args(["schemas", "--out"]).arg(out.path()).status().unwrap();
    assert!(status.success());
    for (name, text) in waveguide::model::schema::files() {
        assert_eq!(fs::read_to_string(out.path().join(&name)).unwrap(), text, "{name}");
    }
}
