//! `waveguide validate` as a user runs it: the real binary, exit codes and output formats.

use std::fs;
use waveguide_tests::{copy_dir, git, repo_root, run_waveguide, waveguide};

fn stdout(output: &std::process::Output) -> String {
    String::from_utf8(output.stdout.clone()).unwrap()
}

#[test]
fn the_example_fleet_is_valid() {
    let output = run_waveguide(&["validate", "examples/fleet"]);
    assert_eq!(output.status.code(), Some(0), "{}", stdout(&output));
    assert!(
        stdout(&output).contains("0 errors") || stdout(&output).starts_with("ok:"),
        "{}",
        stdout(&output)
    );
}

#[test]
fn output_closed_early_ends_the_command_quietly() {
    use std::os::unix::process::ExitStatusExt;
    use std::process::Stdio;
    // As when a pager or `head` stops reading: no panic, the command just ends.
    let mut child = waveguide()
        .args(["validate", "examples/fleet", "--format", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    const SIGPIPE: i32 = 13;
    assert!(output.status.success() || output.status.signal() == Some(SIGPIPE), "{:?}", output.status);
}

#[test]
fn errors_exit_1_with_github_annotations() {
    let output = run_waveguide(&["validate", "examples/invalid/dangling-references", "--format", "github"]);
    assert_eq!(output.status.code(), Some(1));
    let text = stdout(&output);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 5, "{text}");
    assert!(
        lines.iter().all(|l| l.starts_with("::error file=examples/invalid/dangling-references/")),
        "{text}"
    );
    assert!(
        lines.contains(
            &"::error file=examples/invalid/dangling-references/groups.yaml,line=19,col=11,\
              title=WG104 A group's parent is not a declared group::unknown parent group \"eu-west\""
        ),
        "{text}"
    );
}

#[test]
fn warnings_are_printed_but_exit_0() {
    let output = run_waveguide(&["validate", "examples/invalid/warnings-only", "--format", "github"]);
    assert_eq!(output.status.code(), Some(0));
    let text = stdout(&output);
    assert_eq!(text.lines().filter(|l| l.starts_with("::warning file=")).count(), 2, "{text}");
}

#[test]
fn json_lists_every_diagnostic() {
    let output = run_waveguide(&["validate", "examples/invalid/group-cycle", "--format", "json"]);
    assert_eq!(output.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["errors"], 2);
    assert_eq!(report["warnings"], 0);
    let first = &report["diagnostics"][0];
    assert_eq!(first["code"], "WG107");
    assert_eq!(first["severity"], "error");
    assert_eq!(first["file"], "examples/invalid/group-cycle/groups.yaml");
    assert_eq!(first["line"], 8);
    assert_eq!(first["column"], 11);
    assert_eq!(first["notes"].as_array().unwrap().len(), 2);
}

#[test]
fn text_output_reads_like_a_compiler() {
    let output = run_waveguide(&["validate", "examples/invalid/dangling-references"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stdout(&output).contains(
            "error[WG104]: unknown parent group \"eu-west\"\n  --> examples/invalid/dangling-references/groups.yaml:19:11\n"
        ),
        "{}",
        stdout(&output)
    );
    assert!(stdout(&output).ends_with("5 errors, 0 warnings\n"));
}

#[test]
fn unreadable_input_and_bad_usage_exit_2() {
    let output = run_waveguide(&["validate", "examples/no-such-fleet"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("examples/no-such-fleet"));
    let output = run_waveguide(&["validate", "--format", "yaml"]);
    assert_eq!(output.status.code(), Some(2));
}

#[test]
fn rev_validates_a_commit_not_the_working_tree() {
    let repo = tempfile::tempdir().unwrap();
    let fleet = repo.path().join("fleet");
    git(repo.path(), &["init", "-q", "-b", "main"]);
    copy_dir(&repo_root().join("examples/invalid/group-cycle"), &fleet);
    git(repo.path(), &["add", "."]);
    git(repo.path(), &["commit", "-q", "-m", "a fleet with a cycle"]);
    git(repo.path(), &["tag", "broken"]);
    // Fix the working tree only: the cycle stays in the commit.
    fs::write(
        fleet.join("groups.yaml"),
        "apiVersion: waveguide.dev/v1alpha1\nkind: Group\nmetadata: {name: eu}\nspec: {}\n",
    )
    .unwrap();

    let on_disk = waveguide().args(["validate", "fleet"]).current_dir(repo.path()).output().unwrap();
    assert_eq!(on_disk.status.code(), Some(0), "{}", stdout(&on_disk));
    for rev in ["HEAD", "main", "broken"] {
        let at_rev =
            waveguide().args(["validate", "fleet", "--rev", rev]).current_dir(repo.path()).output().unwrap();
        assert_eq!(at_rev.status.code(), Some(1), "{rev}");
        assert!(stdout(&at_rev).contains("--> fleet/groups.yaml:8:11"), "{}", stdout(&at_rev));
    }
    let missing =
        waveguide().args(["validate", "fleet", "--rev", "nope"]).current_dir(repo.path()).output().unwrap();
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("\"nope\""));
}
