//! The committed CustomResourceDefinitions under `crds/` (and the Helm chart's copy) are
//! exactly what the resource types generate, and `waveguide crds` writes them.

use std::fs;
use waveguide_tests::{repo_root, waveguide};

const REGENERATE: &str =
    "regenerate them with `cargo run -p waveguide -- crds --out crds`, copy crds/*.yaml \
                          to charts/waveguide/crds/, and commit the result";

fn names_in(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn committed_crds_match_the_resource_types() {
    let generated = waveguide::k8s::crd::files();
    let expected: Vec<String> = generated.keys().cloned().collect();
    for dir in ["crds", "charts/waveguide/crds"] {
        let dir = repo_root().join(dir);
        for (name, text) in &generated {
            let committed = fs::read_to_string(dir.join(name)).unwrap_or_default();
            assert!(
                committed == *text,
                "{}/{name} differs from the resource types: {REGENERATE}",
                dir.display()
            );
        }
        assert_eq!(
            names_in(&dir),
            expected,
            "{} holds files the types do not generate: {REGENERATE}",
            dir.display()
        );
    }
}

#[test]
fn the_cli_writes_the_same_files() {
    let out = tempfile::tempdir().unwrap();
    let status = waveguide().args(["crds", "--out"]).arg(out.path()).status().unwrap();
    assert!(status.success());
    for (name, text) in waveguide::k8s::crd::files() {
        assert_eq!(fs::read_to_string(out.path().join(&name)).unwrap(), text, "{name}");
    }
}

#[test]
fn the_crds_have_status_short_names_and_print_columns() {
    for (name, text) in waveguide::k8s::crd::files() {
        let crd: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
        let version = &crd["spec"]["versions"][0];
        assert_eq!(version["name"], "v1alpha1", "{name}");
        assert!(version["subresources"]["status"].is_mapping(), "{name} has a status subresource");
        assert!(crd["spec"]["names"]["shortNames"].as_sequence().is_some_and(|s| !s.is_empty()), "{name}");
        let columns: Vec<&str> = version["additionalPrinterColumns"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        let expected: &[&str] = match crd["spec"]["names"]["kind"].as_str().unwrap() {
            "Fleet" => &["Ready", "Commit", "Devices", "Age"],
            // Rollback-Of shows with `-o wide` (priority 1).
            _ => &["Policy", "Release", "Wave", "Updated", "Failed", "Phase", "Age", "Rollback-Of"],
        };
        assert_eq!(columns, expected, "{name}");
    }
}
