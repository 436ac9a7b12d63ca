//! Helpers shared by the end-to-end tests: where the repository is, and the real
//! `waveguide` binary.

#![allow(dead_code)] // Each test crate uses only some of these.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// The root of the Waveguide checkout.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ is inside the checkout").to_owned()
}

/// The path of the `waveguide` binary, built once per test process with the same profile
/// as the tests (cargo only exposes `CARGO_BIN_EXE_*` to the package that owns the
/// binary, so this crate builds it through cargo itself).
pub fn waveguide_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        escargot::CargoBuild::new()
            .manifest_path(repo_root().join("Cargo.toml"))
            .package("waveguide")
            .bin("waveguide")
            .current_release()
            .run()
            .expect("cargo builds the waveguide binary")
            .path()
            .to_owned()
    })
}

/// A `waveguide` command, run from the checkout's root.
pub fn waveguide() -> Command {
    let mut command = Command::new(waveguide_bin());
    command.current_dir(repo_root());
    command
}

/// Runs `waveguide` with `args` from the checkout's root.
pub fn run_waveguide(args: &[&str]) -> Output {
    waveguide().args(args).output().expect("waveguide runs")
}

/// Runs `git` in `dir` with a fixed identity and no signing; panics when it fails.
pub fn git(dir: &Path, args: &[&str]) {
    let status = Command::new("git")
        .args([
            "-c",
            "user.name=Fleet Operator",
            "-c",
            "user.email=ops@example.com",
            "-c",
            "commit.gpgsign=false",
        ])
        .args(args)
        .current_dir(dir)
        .status()
        .expect("git runs");
    assert!(status.success(), "git {args:?}");
}

/// Copies the directory tree `from` to `to`.
pub fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), target).unwrap();
        }
    }
}
