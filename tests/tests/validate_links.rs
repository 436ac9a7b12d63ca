//! The fleet repository never leads out of itself: `waveguide validate`, `waveguide plan`
//! and `waveguide run` as users start them, on working directories and Git repositories
//! holding symbolic links to a secret outside the repository, to themselves and in a
//! loop. The links are reported where they are, nothing is read through them, and the
//! secret appears in no output format. Also: the limits answer at once, and errors that
//! stop a command before anything is checked honour `--format`.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::{Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use waveguide_tests::{git, repo_root, waveguide, waveguide_bin, KillOnDrop};

/// What the secret file outside the repository holds; it must be printed nowhere.
const SECRET: &str = "root:x:0:0:SECRET-7f3a91:/root:/bin/sh";

/// A fleet at `repo/fleet` (the valid one of `examples/invalid/symbolic-links`) next to
/// links to `outside/secret.yaml`, to itself, to each other and to a directory outside.
fn fleet_with_links(repo: &Path, outside: &Path) {
    std::fs::create_dir_all(outside.join("more")).unwrap();
    std::fs::write(outside.join("secret.yaml"), SECRET).unwrap();
    std::fs::write(outside.join("more/devices.yaml"), SECRET).unwrap();
    let fleet = repo.join("fleet");
    std::fs::create_dir_all(fleet.join("groups")).unwrap();
    let example = repo_root().join("examples/invalid/symbolic-links/fleet.yaml");
    std::fs::copy(example, fleet.join("fleet.yaml")).unwrap();
    symlink(outside.join("secret.yaml"), fleet.join("groups/secret.yaml")).unwrap();
    symlink("loop.yaml", fleet.join("loop.yaml")).unwrap();
    symlink("b.yml", fleet.join("a.yml")).unwrap();
    symlink("a.yml", fleet.join("b.yml")).unwrap();
    symlink(outside.join("more"), fleet.join("more")).unwrap();
}

fn text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

/// Runs `waveguide` in `dir` and checks that the secret is not in what it printed.
fn run_in(dir: &Path, args: &[&str]) -> Output {
    let output = waveguide().args(args).current_dir(dir).output().unwrap();
    assert!(
        !text(&output).contains("SECRET-7f3a91"),
        "waveguide {args:?} printed the secret:\n{}",
        text(&output)
    );
    output
}

/// The links, as each format reports them.
fn assert_links_reported(output: &Output, format: &str) {
    let out = text(output);
    assert_eq!(output.status.code(), Some(1), "{out}");
    for link in ["groups/secret.yaml", "loop.yaml", "a.yml", "b.yml"] {
        let expected = match format {
            "json" => format!("\"file\": \"fleet/{link}\""),
            "github" => format!("::error file=fleet/{link},line=1,col=1,title=WG010 "),
            _ => format!("--> fleet/{link}:1:1"),
        };
        assert!(out.contains(&expected), "{format}: no {expected:?} in\n{out}");
    }
    assert!(out.contains("WG011"), "{out}");
}

#[test]
fn validate_and_plan_never_follow_links_in_a_working_directory_or_a_commit() {
    let dir = tempfile::tempdir().unwrap();
    let (repo, outside) = (dir.path().join("repo"), dir.path().join("outside"));
    fleet_with_links(&repo, &outside);
    for format in ["text", "json", "github"] {
        let output = run_in(&repo, &["validate", "fleet", "--format", format]);
        assert_links_reported(&output, format);
    }
    for format in ["text", "json", "markdown"] {
        let output = run_in(&repo, &["plan", "--path", "fleet", "--format", format]);
        assert_eq!(output.status.code(), Some(1), "{}", text(&output));
        assert!(text(&output).contains("WG010"), "{}", text(&output));
    }

    // The same links committed: Git stores them as links, and they are reported alike.
    git(&repo, &["init", "-q", "-b", "main"]);
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "-q", "-m", "links"]);
    for format in ["text", "json", "github"] {
        let output = run_in(&repo, &["validate", "fleet", "--rev", "HEAD", "--format", format]);
        assert_links_reported(&output, format);
    }
    let output = run_in(&repo, &["plan", "--path", "fleet", "--head", "HEAD", "--format", "json"]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert!(text(&output).contains("\"code\": \"WG010\""), "{}", text(&output));
}

#[test]
fn a_fleet_path_that_cannot_be_read_is_reported_in_the_chosen_format() {
    let dir = tempfile::tempdir().unwrap();
    symlink("loop", dir.path().join("loop")).unwrap();
    let json = run_in(dir.path(), &["validate", "loop", "--format", "json"]);
    assert_eq!(json.status.code(), Some(2));
    let report: serde_json::Value = serde_json::from_slice(&json.stdout).expect("JSON on standard output");
    assert_eq!(report["errors"], 1);
    assert_eq!(report["diagnostics"], serde_json::json!([]));
    assert!(report["fatal"].as_str().unwrap().contains("cannot read loop"), "{report}");
    let github = run_in(dir.path(), &["validate", "loop", "--format", "github"]);
    assert_eq!(github.status.code(), Some(2));
    let annotation = String::from_utf8(github.stdout).unwrap();
    assert!(annotation.starts_with("::error title=waveguide::cannot read loop"), "{annotation}");
    let plan = run_in(dir.path(), &["plan", "--repo", "loop", "--format", "json"]);
    assert_eq!(plan.status.code(), Some(2));
    let report: serde_json::Value = serde_json::from_slice(&plan.stdout).expect("JSON on standard output");
    assert!(report["fatal"].as_str().unwrap().contains("loop"), "{report}");
}

#[test]
fn a_trillion_devices_and_a_range_past_the_largest_number_are_refused_at_once() {
    // Built before the clock starts.
    waveguide_bin();
    for command in
        [&["validate", "examples/invalid/limits"][..], &["plan", "--repo", "examples/invalid/limits"]]
    {
        let started = Instant::now();
        let output = waveguide().args(command).output().unwrap();
        let took = started.elapsed();
        let out = text(&output);
        assert_eq!(output.status.code(), Some(1), "{out}");
        assert!(out.contains("error[WG216]: the DeviceSet declares 1000000000000 devices"), "{out}");
        assert!(out.contains("error[WG217]: device range from 18446744073709551614 with count 5"), "{out}");
        assert!(took < Duration::from_secs(1), "{command:?} took {took:?}");
    }
}

/// `waveguide run` following `repo`, and the address of its API.
fn run(repo: &Path, data: &Path) -> (KillOnDrop, String, mpsc::Receiver<String>) {
    let mut child = waveguide()
        .args(["run", "--path", "fleet", "--repo"])
        .arg(repo)
        .arg("--data")
        .arg(data)
        .args(["--listen", "127.0.0.1:0", "--poll-interval", "1s", "--step-interval", "200ms"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (address, lines) = (mpsc::channel(), mpsc::channel());
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("waveguide run: {line}");
            if let Some(rest) = line.split("device API on http://").nth(1) {
                let _ = address.0.send(rest.split('/').next().unwrap().to_string());
            }
            let _ = lines.0.send(line);
        }
    });
    let addr = address.1.recv_timeout(Duration::from_secs(60)).expect("waveguide run prints its address");
    (KillOnDrop(child), format!("http://{addr}"), lines.1)
}

/// The controller's status after a pass, as `waveguide reconcile --format json` prints it.
fn status(base: &str, data: &Path) -> String {
    let output = waveguide()
        .args(["reconcile", "--server", base, "--format", "json", "--data"])
        .arg(data)
        .output()
        .unwrap();
    text(&output)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_controller_refuses_a_commit_with_links_and_reads_nothing_through_them() {
    let dir = tempfile::tempdir().unwrap();
    let (repo, outside, data) =
        (dir.path().join("repo"), dir.path().join("outside"), dir.path().join("data"));
    fleet_with_links(&repo, &outside);
    git(&repo, &["init", "-q", "-b", "main"]);
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "-q", "-m", "links"]);

    let (_process, base, lines) = run(&repo, &data);
    let refused = status(&base, &data);
    assert!(refused.contains("WG010"), "{refused}");
    assert!(refused.contains("a.yml"), "{refused}");
    assert!(!refused.contains("SECRET-7f3a91"), "{refused}");
    // Nothing was published for the refused commit.
    let timestamp = format!("{base}/tuf/metadata/timestamp.json");
    let served = || async { reqwest::get(&timestamp).await.unwrap().status() == 200 };
    assert!(!served().await);

    // Without the links the next commit is applied.
    for link in ["groups/secret.yaml", "loop.yaml", "a.yml", "b.yml", "more"] {
        std::fs::remove_file(repo.join("fleet").join(link)).unwrap();
    }
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-q", "-m", "no links"]);
    let until = Instant::now() + Duration::from_secs(30);
    while !served().await {
        assert!(Instant::now() < until, "the commit without links was not applied");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let log: Vec<String> = lines.try_iter().collect();
    assert!(log.iter().any(|l| l.contains("commit refused") && l.contains("WG010")), "{log:#?}");
    assert!(!log.iter().any(|l| l.contains("SECRET-7f3a91")));
}
