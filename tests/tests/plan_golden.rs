//! `waveguide plan` as a user runs it: golden output for the example fleet and for a
//! change between two commits of a real Git repository.

use std::fs;
use std::path::Path;
use std::process::Output;
use waveguide_tests::{copy_dir, git, repo_root, run_waveguide, waveguide};

fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).expect("UTF-8 output")
}

fn plan_example(format: &str) -> String {
    let output = run_waveguide(&[
        "plan",
        "--repo",
        "examples/fleet",
        "--inventory",
        "examples/inventory.yaml",
        "--format",
        format,
    ]);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}{}",
        stdout(&output),
        String::from_utf8_lossy(&output.stderr)
    );
    stdout(&output)
}

#[test]
fn example_plan_text() {
    insta::assert_snapshot!("example_text", plan_example("text"));
}

#[test]
fn example_plan_markdown() {
    insta::assert_snapshot!("example_markdown", plan_example("markdown"));
}

#[test]
fn example_plan_json() {
    let text = plan_example("json");
    let json: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    // The totals add up: every governed device is up to date, scheduled or refused.
    let summary = &json["summary"];
    let n = |v: &serde_json::Value| v.as_u64().unwrap();
    assert_eq!(
        n(&summary["devices"]),
        n(&summary["toUpdate"])
            + n(&summary["upToDate"])
            + n(&summary["refusedDowngrades"])
            + n(&summary["uncovered"])
    );
    insta::assert_snapshot!("example_json", text);
}

#[test]
fn plan_is_deterministic() {
    assert_eq!(plan_example("json"), plan_example("json"));
}

fn edit(path: &Path, from: &str, to: &str) {
    let text = fs::read_to_string(path).unwrap();
    assert!(text.contains(from), "{} lacks {from:?}", path.display());
    fs::write(path, text.replacen(from, to, 1)).unwrap();
}

/// A repository with the example fleet under `fleet/` (base), then a change (head): a new
/// release 1.5.1 for the `stable` policy, a Berlin maintenance window, the Berlin lab
/// bench removed, and the Seoul gateways' keys rotated.
fn change_repository() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    git(root, &["init", "-q", "-b", "main"]);
    copy_dir(&repo_root().join("examples/fleet"), &root.join("fleet"));
    git(root, &["add", "."]);
    git(root, &["commit", "-q", "-m", "base"]);

    let fleet = root.join("fleet");
    let release = fs::read_to_string(fleet.join("releases/edge-os-1-5-0.yaml"))
        .unwrap()
        .replace("edge-os-1-5-0", "edge-os-1-5-1")
        .replace("1.5.0", "1.5.1");
    fs::write(fleet.join("releases/edge-os-1-5-1.yaml"), release).unwrap();
    edit(&fleet.join("policies/stable.yaml"), "release: edge-os-1-5-0", "release: edge-os-1-5-1");
    edit(&fleet.join("groups/eu-sites.yaml"), "    site: berlin\n", "    site: berlin\n  maintenanceWindows:\n    - {schedule: \"0 1 * * *\", duration: 4h, timeZone: Europe/Berlin}\n");
    fs::remove_file(fleet.join("devices/berlin-lab.yaml")).unwrap();
    git(root, &["add", "-A"]);
    git(root, &["commit", "-q", "-m", "head"]);
    dir
}

fn plan_change(repo: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "plan",
        "--repo",
        repo.to_str().unwrap(),
        "--path",
        "fleet",
        "--base",
        "HEAD~1",
        "--head",
        "HEAD",
    ];
    args.extend_from_slice(extra);
    waveguide().args(&args).output().expect("waveguide runs")
}

#[test]
fn change_between_commits() {
    let repo = change_repository();
    for format in ["text", "markdown", "json"] {
        let output = plan_change(repo.path(), &["--format", format]);
        assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stderr));
        insta::assert_snapshot!(format!("change_{format}"), stdout(&output));
    }
}

#[test]
fn change_against_an_inventory() {
    let repo = change_repository();
    let inventory = repo_root().join("examples/inventory.yaml");
    let output = plan_change(repo.path(), &["--format", "json", "--inventory", inventory.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stderr));
    let json: serde_json::Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(json["discovered"]["source"], "inventory");
    // Every Europe/North America device moves from 1.5.0 to 1.5.1, plus the removed lab bench.
    assert_eq!(json["change"]["devicesChanged"], 1372 + 1);
    let stable = json["policies"].as_array().unwrap().iter().find(|p| p["name"] == "stable").unwrap();
    assert_eq!(stable["version"], "1.5.1");
}

#[test]
fn a_head_with_errors_exits_1_and_prints_the_diagnostics() {
    let repo = change_repository();
    let fleet = repo.path().join("fleet");
    // Same priority, different release, overlapping devices: a conflict.
    edit(&fleet.join("policies/apac.yaml"), "groups: [apac]", "groups: [apac, eu]");
    git(repo.path(), &["commit", "-q", "-am", "conflict"]);
    let output = plan_change(repo.path(), &[]);
    assert_eq!(output.status.code(), Some(1));
    let text = stdout(&output);
    assert!(text.contains("error[WG301]"), "{text}");
    assert!(text.contains("policies \"apac\" and \"stable\""), "{text}");
    assert!(text.contains("--> policies/apac.yaml:"), "{text}");
}
