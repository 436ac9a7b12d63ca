//! `waveguide gen-fleet` writes the same valid fleet for the same arguments, and `plan`
//! reads it with its inventory.

use std::fs;
use std::path::Path;
use waveguide_tests::waveguide;

fn generate(out: &Path, seed: &str) {
    let status = waveguide()
        .args([
            "gen-fleet",
            "--devices",
            "2500",
            "--groups",
            "10",
            "--set-size",
            "100",
            "--seed",
            seed,
            "--out",
        ])
        .arg(out)
        .status()
        .expect("gen-fleet runs");
    assert!(status.success());
}

/// Every file under `dir`, relative path → contents, sorted.
fn tree(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let name = path.strip_prefix(dir).unwrap().display().to_string();
                files.push((name, fs::read(&path).unwrap()));
            }
        }
    }
    files.sort();
    files
}

#[test]
fn generated_fleets_are_deterministic_and_plannable() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b, c) = (tmp.path().join("a"), tmp.path().join("b"), tmp.path().join("c"));
    generate(&a, "7");
    generate(&b, "7");
    generate(&c, "8");
    assert_eq!(tree(&a), tree(&b));
    assert_eq!(
        fs::read(tmp.path().join("a.inventory.json")).unwrap(),
        fs::read(tmp.path().join("b.inventory.json")).unwrap()
    );
    assert_ne!(tree(&a), tree(&c), "the seed changes the fleet");

    let output = waveguide()
        .args(["plan", "--format", "json", "--repo"])
        .arg(&a)
        .arg("--inventory")
        .arg(tmp.path().join("a.inventory.json"))
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stdout));
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(json["summary"]["devices"], 2500);
    assert_eq!(json["summary"]["uncovered"], 0);
    let names: Vec<&str> =
        json["policies"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["early-regions", "fleet", "x86-hold"]);
    // Large sites are split across several DeviceSet files.
    assert!(fs::read_dir(a.join("devices/site-00000")).unwrap().count() > 1);
}
