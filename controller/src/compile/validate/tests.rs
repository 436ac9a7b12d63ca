use super::*;
use crate::compile::load::load;
use crate::source::FleetFiles;

const HEADER: &str = "apiVersion: waveguide.dev/v1alpha1\n";

/// Loads `(file, yaml)` pairs (each document without its apiVersion line, which is
/// added) and checks them; answers `CODE file:line:col message` lines.
fn run(files: &[(&str, &str)]) -> Vec<String> {
    let fleet = FleetFiles::from_pairs(files.iter().map(|(path, text)| {
        let text: Vec<String> = text.split("---\n").map(|doc| format!("{HEADER}{doc}")).collect();
        (*path, text.join("---\n").into_bytes())
    }));
    let (documents, load_errors) = load(&fleet);
    assert!(load_errors.is_empty(), "{load_errors:#?}");
    check(&documents).iter().map(|d| format!("{} {} {}", d.code, d.location, d.message)).collect()
}

const BASE: &str = "\
kind: Group
metadata: {name: eu}
spec: {}
---
kind: Release
metadata: {name: v1}
spec: {version: 1.0.0}
";

#[test]
fn a_valid_fleet_has_no_diagnostics() {
    let devices = "\
kind: Device
metadata: {name: dev-1}
spec: {group: eu, labels: {hw: rpi4}, pin: v1, publicKey: \"MCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=\"}
";
    // That key is the 44-byte DER (SubjectPublicKeyInfo) form, not a raw ed25519 key.
    assert_eq!(run(&[("base.yaml", BASE)]), Vec::<String>::new());
    let out = run(&[("base.yaml", BASE), ("d.yaml", devices)]);
    assert_eq!(out.len(), 1, "{out:?}");
    assert!(out[0].starts_with("WG213 d.yaml:4:59"), "{out:?}");
}

#[test]
fn names_and_duplicates() {
    let groups = "\
kind: Group
metadata: {name: EU_West}
spec: {}
---
kind: Group
metadata: {name: eu}
spec: {labels: {\"-bad\": x, ok: \"no spaces\", example.com/t: \"a b\"}}
";
    let out = run(&[("base.yaml", BASE), ("groups.yaml", groups)]);
    assert_eq!(
        out,
        [
            "WG101 groups.yaml:3:18 invalid name \"EU_West\": a name may hold only lower-case letters, digits and '-'",
            "WG102 groups.yaml:8:18 duplicate group name \"eu\"",
            "WG109 groups.yaml:9:17 invalid label key \"-bad\": the name part must start and end with a letter or digit",
            "WG109 groups.yaml:9:32 invalid value \"no spaces\" of label \"ok\": a label value may hold only letters, digits, '-', '_' and '.'",
            "WG109 groups.yaml:9:60 invalid value \"a b\" of label \"example.com/t\": a label value may hold only letters, digits, '-', '_' and '.'",
        ]
    );
}

#[test]
fn references_suggest_close_names() {
    let docs = "\
kind: Group
metadata: {name: eu-west}
spec:
  parent: eu-wst
---
kind: Device
metadata: {name: d1}
spec: {group: eu-west, pin: v2}
---
kind: Policy
metadata: {name: p}
spec:
  selector: {groups: [eu, asia]}
  release: v1
";
    let out = run(&[("base.yaml", BASE), ("x.yaml", docs)]);
    assert_eq!(
        out,
        [
            "WG104 x.yaml:5:11 unknown parent group \"eu-wst\" (did you mean \"eu-west\"?)",
            "WG106 x.yaml:10:29 unknown release \"v2\" (did you mean \"v1\"?)",
            "WG105 x.yaml:16:27 unknown group \"asia\"",
        ]
    );
}

#[test]
fn references_to_documents_that_failed_to_load_are_not_reported_again() {
    let docs = "\
kind: Group
metadata: {name: eu}
spec: {parnet: x}
---
kind: Group
metadata: {name: berlin}
spec: {parent: eu}
---
kind: Device
metadata: {name: d1}
spec: {group: eu}
";
    let fleet = FleetFiles::from_pairs([(
        "g.yaml",
        docs.split("---\n").map(|d| format!("{HEADER}{d}")).collect::<Vec<_>>().join("---\n"),
    )]);
    let (documents, load_errors) = load(&fleet);
    assert_eq!(load_errors.len(), 1);
    assert_eq!(documents.unparsed.len(), 1);
    assert_eq!(documents.unparsed[0].name, "eu");
    assert_eq!(check(&documents), Vec::new());
}

#[test]
fn cycles_are_named_once() {
    let docs = "\
kind: Group
metadata: {name: a}
spec: {parent: c}
---
kind: Group
metadata: {name: b}
spec: {parent: a}
---
kind: Group
metadata: {name: c}
spec: {parent: b}
---
kind: Group
metadata: {name: d}
spec: {parent: d}
---
kind: Group
metadata: {name: e}
spec: {parent: a}
";
    let out = run(&[("cycle.yaml", docs)]);
    assert_eq!(
        out,
        [
            "WG107 cycle.yaml:4:16 the group hierarchy has a cycle: a → c → b → a (each arrow points to the parent)",
            "WG107 cycle.yaml:19:16 the group hierarchy has a cycle: d → d (each arrow points to the parent)",
        ]
    );
}

#[test]
fn duplicate_device_ids_across_devices_and_sets() {
    let docs = "\
kind: Device
metadata: {name: store-0002}
spec: {group: eu}
---
kind: DeviceSet
metadata: {name: stores}
spec:
  group: eu
  range: {prefix: store-, start: 0, count: 5, width: 4}
---
kind: DeviceSet
metadata: {name: more}
spec:
  group: eu
  devices:
    - id: x1
    - id: store-0004
    - id: x1
";
    let (documents, _) = load(&FleetFiles::from_pairs([
        ("base.yaml", format!("{HEADER}{}", BASE.replace("---\n", &format!("---\n{HEADER}")))),
        ("d.yaml", format!("{HEADER}{}", docs.replace("---\n", &format!("---\n{HEADER}")))),
    ]));
    let diagnostics = check(&documents);
    let out: Vec<String> = diagnostics
        .iter()
        .map(|d| format!("{} {} {} / {}", d.code, d.location, d.message, d.notes[0].location))
        .collect();
    assert_eq!(
        out,
        [
            "WG103 d.yaml:11:10 duplicate device id \"store-0002\" / d.yaml:3:18",
            "WG103 d.yaml:20:11 duplicate device id \"store-0004\" / d.yaml:11:10",
            "WG103 d.yaml:21:11 duplicate device id \"x1\" / d.yaml:19:11",
        ]
    );
}

#[test]
fn waves_that_do_not_add_up() {
    let policy = "\
kind: Policy
metadata: {name: p}
spec:
  release: v1
  selector: {}
  rollout:
    successThreshold: 5
    failureThreshold: 10
    maxConcurrent: 0
    waves:
      - {name: canary, count: 0}
      - {percent: 60, count: 3}
      - {}
      - {percent: 50, bake: soon}
      - {percent: 0}
      - {name: canaries, selector: {matchLabels: {tier: canary}}}
      - {}
";
    let out = run(&[("base.yaml", BASE), ("p.yaml", policy)]);
    assert_eq!(
        out,
        [
            "WG210 p.yaml:8:23 successThreshold (5) must be greater than failureThreshold (10)",
            "WG214 p.yaml:10:20 maxConcurrent must be at least 1 (0 would never let a device update)",
            "WG206 p.yaml:12:7 the waves' percentages add up to 110, more than 100",
            "WG207 p.yaml:12:31 wave \"canary\" has count 0 and would hold no device",
            "WG209 p.yaml:13:9 wave \"wave-2\" sets both count and percent; keep one",
            "WG208 p.yaml:14:9 wave \"wave-3\" has neither count nor percent, so it takes all remaining devices, but 4 more wave(s) follow it",
            "WG203 p.yaml:15:29 invalid bake time \"soon\" of wave \"wave-4\": expected number at 0 (write e.g. 30m or 1h)",
            "WG207 p.yaml:16:19 wave \"wave-5\" has percent 0 and would hold no device",
        ]
    );
}

#[test]
fn windows_versions_selectors_and_artifacts() {
    let docs = "\
kind: Group
metadata: {name: eu-west}
spec:
  parent: eu
  maintenanceWindows:
    - {schedule: \"0 2 * * *\", duration: 2h, timeZone: Europe/Berlin}
    - {schedule: \"0 25 * * *\", duration: 0s, timeZone: Mars/Olympus}
---
kind: Release
metadata: {name: v2}
spec:
  version: v2.0
  compatible:
    matchExpressions:
      - {key: hw, operator: In}
      - {key: hw, operator: Exists, values: [x]}
  artifacts:
    - {name: os.img, url: \"https://example.com/os.img\", length: 1, sha256: \"00000000000000000000000000000000000000000000000000000000000000ff\"}
    - {name: os.img, url: \"not a url\", length: 1, sha256: \"ABC\"}
";
    let out = run(&[("base.yaml", BASE), ("x.yaml", docs)]);
    let codes: Vec<&str> = out.iter().map(|l| &l[..l.find(' ').unwrap()]).collect();
    let at: Vec<&str> = out.iter().map(|l| l.split(' ').nth(1).unwrap()).collect();
    assert_eq!(
        codes,
        ["WG202", "WG203", "WG204", "WG201", "WG205", "WG205", "WG211", "WG215", "WG212"],
        "{out:#?}"
    );
    assert_eq!(
        at,
        [
            "x.yaml:8:18",
            "x.yaml:8:42",
            "x.yaml:8:56",
            "x.yaml:14:12",
            "x.yaml:17:9",
            "x.yaml:18:45",
            "x.yaml:21:14",
            "x.yaml:21:27",
            "x.yaml:21:59",
        ]
    );
    assert!(out[3].contains("without the leading 'v'"), "{}", out[3]);
}

#[test]
fn per_device_problems_are_capped() {
    let mut set = String::from("kind: DeviceSet\nmetadata: {name: s}\nspec:\n  group: eu\n  devices:\n");
    for i in 0..(MAX_PER_DOCUMENT + 5) {
        set.push_str(&format!("    - {{id: \"bad id {i}\"}}\n"));
    }
    let out = run(&[("base.yaml", BASE), ("s.yaml", &set)]);
    assert_eq!(out.len(), MAX_PER_DOCUMENT + 1);
    assert!(out[0].starts_with("WG108 s.yaml:1:1 5 more WG108 problems"), "{}", out[0]);
    assert!(out[1].starts_with("WG108 s.yaml:7:12 invalid device id \"bad id 0\""), "{}", out[1]);
}

#[test]
fn a_negative_bake_time_is_refused() {
    let policy = "\
kind: Policy
metadata: {name: p}
spec:
  release: v1
  selector: {}
  rollout:
    waves: [{count: 1, bake: -5m}, {bake: 1h 30m}]
";
    let out = run(&[("base.yaml", BASE), ("p.yaml", policy)]);
    assert_eq!(
        out,
        ["WG203 p.yaml:8:30 invalid bake time \"-5m\" of wave \"wave-1\": it is negative (write e.g. 30m or 1h)"]
    );
}

#[test]
fn device_health_rules_are_checked_where_they_are_written() {
    let policy = "\
kind: Policy
metadata: {name: p}
spec:
  release: v1
  selector: {}
  rollout:
    confirmation: soon
    deviceTimeout: 0s
    retries: {max: 2, backoff: -1m, on: [install]}
    failureThreshold: {install: 120, health: 96, minimumSample: 3}
    onFailure: rollback
";
    let out = run(&[("base.yaml", BASE), ("p.yaml", policy)]);
    assert_eq!(
        out,
        [
            "WG203 p.yaml:8:19 invalid confirmation \"soon\": expected number at 0 (write e.g. 30m or 1h)",
            "WG203 p.yaml:9:20 deviceTimeout is 0, so every device would time out at once (write e.g. 30m)",
            "WG203 p.yaml:10:32 invalid retries.backoff \"-1m\": it is negative (write e.g. 30m or 1h)",
            "WG210 p.yaml:11:33 install is 120; it is a percentage between 0 and 100",
        ]
    );
    let policy = policy
        .replace("install: 120", "install: 10")
        .replace("onFailure: rollback", "onFailure: halt")
        .replace("confirmation: soon", "confirmation: 10m")
        .replace("deviceTimeout: 0s", "deviceTimeout: 5m");
    let out = run(&[("base.yaml", BASE), ("p.yaml", &policy)]);
    assert_eq!(
        out,
        [
            "WG210 p.yaml:8:5 successThreshold (95) must be greater than failureThreshold.health (96)",
            "WG203 p.yaml:9:20 deviceTimeout (5m) must be longer than confirmation (10m): every device would \
             time out while it confirms the release",
            "WG203 p.yaml:10:32 invalid retries.backoff \"-1m\": it is negative (write e.g. 30m or 1h)",
        ]
    );
}
