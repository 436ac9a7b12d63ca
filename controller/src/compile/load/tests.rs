use super::*;

fn files(pairs: &[(&str, &str)]) -> FleetFiles {
    FleetFiles::from_pairs(pairs.iter().map(|(p, t)| (*p, t.as_bytes().to_vec())))
}

fn codes(diagnostics: &[Diagnostic]) -> Vec<String> {
    diagnostics.iter().map(|d| format!("{} {}", d.code, d.location)).collect()
}

const GROUPS: &str = "\
# regions
apiVersion: waveguide.dev/v1alpha1
kind: Group
metadata:
  name: eu
spec:
  labels: {region: eu}
---
apiVersion: waveguide.dev/v1alpha1
kind: Group
metadata: {name: eu-west}
spec:
  parent: eu
  maintenanceWindows:
    - schedule: \"0 2 * * *\"
      duration: 2h
";

#[test]
fn a_cached_load_parses_only_changed_files_and_matches_a_full_load() {
    let set = |name: &str, id: &str| {
        format!(
                "apiVersion: waveguide.dev/v1alpha1\nkind: DeviceSet\nmetadata: {{name: {name}}}\nspec:\n  group: eu\n  devices:\n    - id: {id}\n"
            )
    };
    let broken = "apiVersion: waveguide.dev/v1alpha1\nkind: Group\nmetadata: {name: x}\nspec: [\n";
    let (a, b) = (set("a", "a-1"), set("b", "b-1"));
    let first = files(&[("groups.yaml", GROUPS), ("a.yaml", &a), ("b.yaml", &b), ("broken.yaml", broken)]);
    let mut cache = LoadCache::default();
    let (docs1, diags1) = load_cached(&first, &mut cache);
    assert_eq!(docs1.device_sets.len(), 2);

    // b changes, broken.yaml and groups.yaml stay, c is new, a is unchanged but read
    // into a new buffer (as from a directory): equal bytes are enough.
    let b2 = set("b", "b-2");
    let c = set("c", "c-1");
    let second = files(&[
        ("groups.yaml", GROUPS),
        ("a.yaml", &a),
        ("b.yaml", &b2),
        ("broken.yaml", broken),
        ("c.yaml", &c),
    ]);
    let (docs2, diags2) = load_cached(&second, &mut cache);
    let (full, full_diags) = load(&second);
    assert_eq!(codes(&diags2), codes(&full_diags));
    assert_eq!(codes(&diags2), codes(&diags1), "the unchanged broken file is still reported");
    let ids = |d: &Documents| -> Vec<String> {
        d.device_sets.iter().map(|s| format!("{}:{}", s.location, s.value.spec.devices[0].id)).collect()
    };
    assert_eq!(ids(&docs2), ids(&full));
    assert_eq!(ids(&docs2), ["a.yaml:1:1:a-1", "b.yaml:1:1:b-2", "c.yaml:1:1:c-1"]);
    assert_eq!(docs2.groups.len(), 2);
    assert!(Arc::ptr_eq(&docs1.device_sets[0].value, &docs2.device_sets[0].value), "a was not parsed again");
    assert!(!Arc::ptr_eq(&docs1.device_sets[1].value, &docs2.device_sets[1].value));

    // A file removed from the fleet leaves the cache.
    let third = files(&[("groups.yaml", GROUPS), ("c.yaml", &c)]);
    let (docs3, diags3) = load_cached(&third, &mut cache);
    assert!(diags3.is_empty(), "{:?}", codes(&diags3));
    assert_eq!(ids(&docs3), ["c.yaml:1:1:c-1"]);
    assert_eq!(cache.files.len(), 2);
}

#[test]
fn loads_multi_document_files_with_locations() {
    let (docs, diagnostics) = load(&files(&[("groups.yaml", GROUPS)]));
    assert!(diagnostics.is_empty(), "{diagnostics:?}");
    assert_eq!(docs.groups.len(), 2);
    assert_eq!(docs.groups[0].location.to_string(), "groups.yaml:2:1");
    assert_eq!(docs.groups[1].location.to_string(), "groups.yaml:9:1");
    assert_eq!(docs.groups[1].name(), "eu-west");
    assert_eq!(docs.groups[1].locate("spec.parent").to_string(), "groups.yaml:13:11");
    assert_eq!(docs.groups[1].name_location().to_string(), "groups.yaml:11:18");
    assert_eq!(docs.groups[1].locate("spec.maintenanceWindows[0].duration").to_string(), "groups.yaml:16:17");
    // A defaulted field answers with its deepest existing parent.
    assert_eq!(docs.groups[1].locate("spec.maxConcurrent").to_string(), "groups.yaml:13:3");
}

#[test]
fn every_broken_document_is_reported() {
    let text = "\
apiVersion: waveguide.dev/v1alpha1
kind: Grop
metadata: {name: a}
spec: {}
---
apiVersion: waveguide.dev/v1beta9
kind: Group
metadata: {name: b}
spec: {}
---
apiVersion: waveguide.dev/v1alpha1
kind: Group
metadata: {name: c}
spec:
  parnet: x
---
apiVersion: waveguide.dev/v1alpha1
kind: Device
metadata: {name: d}
spec: {labels: {}}
---
apiVersion: waveguide.dev/v1alpha1
kind: Release
metadata: {name: e}
spec:
  version: [1]
---
apiVersion: waveguide.dev/v1alpha1
kind: Group
metadata: {name: f
spec: {}
---
apiVersion: waveguide.dev/v1alpha1
kind: Group
metadata: {name: ok}
spec: {}
";
    let (docs, diagnostics) = load(&files(&[("all.yaml", text)]));
    assert_eq!(docs.groups.len(), 1, "{diagnostics:?}");
    assert_eq!(
        codes(&diagnostics),
        [
            "WG004 all.yaml:2:7",
            "WG005 all.yaml:6:13",
            "WG007 all.yaml:15:3",
            "WG006 all.yaml:20:7",
            "WG008 all.yaml:26:12",
            "WG002 all.yaml:31:5",
        ]
    );
    assert!(diagnostics[2].message.contains("unknown field `parnet`"), "{}", diagnostics[2].message);
    assert!(diagnostics[3].message.contains("missing field `group`"), "{}", diagnostics[3].message);
}

#[test]
fn flow_style_and_invalid_utf8() {
    let flow = "--- {apiVersion: waveguide.dev/v1alpha1, kind: Release, metadata: {name: r}, spec: {version: 1.0.0}}\n";
    let fleet =
        FleetFiles::from_pairs([("a.yaml", flow.as_bytes().to_vec()), ("b.yaml", b"ok: \xff\n".to_vec())]);
    let (docs, diagnostics) = load(&fleet);
    assert_eq!(docs.releases.len(), 1);
    assert_eq!(docs.releases[0].location.to_string(), "a.yaml:1:1");
    assert_eq!(codes(&diagnostics), ["WG001 b.yaml:1:5"]);
}

#[test]
fn locates_entries_of_large_lists() {
    let mut text = String::from(
            "apiVersion: waveguide.dev/v1alpha1\nkind: DeviceSet\nmetadata: {name: s}\nspec:\n  group: g\n  devices:\n",
        );
    for i in 0..1000 {
        text.push_str(&format!("    - id: dev-{i:04}\n      labels: {{n: \"{i}\"}}\n"));
    }
    let (docs, diagnostics) = load(&files(&[("set.yaml", "# header\n"), ("z/set.yml", &text)]));
    assert!(diagnostics.is_empty());
    let set = &docs.device_sets[0];
    assert_eq!(set.value.spec.devices.len(), 1000);
    assert_eq!(set.locate("spec.devices[500].id").to_string(), "z/set.yml:1007:11");
    assert_eq!(set.locate("spec.devices[500].labels.n").to_string(), "z/set.yml:1008:19");
}

#[test]
fn syntax_errors_point_at_the_unfinished_construct() {
    let text =
        "apiVersion: waveguide.dev/v1alpha1\nkind: Group\nmetadata: {name: a}\nspec:\n  parent: \"eu\n";
    let (_, diagnostics) =
        load(&files(&[("g.yaml", "# one\n---\n# two\n"), ("h.yaml", &format!("---\n{text}"))]));
    assert_eq!(codes(&diagnostics), ["WG002 h.yaml:6:11"]);
    assert_eq!(diagnostics[0].message, "found unexpected end of stream, while scanning a quoted scalar");
    let (_, diagnostics) = load(&files(&[("m.yaml", "a: b: c\n")]));
    assert_eq!(codes(&diagnostics), ["WG002 m.yaml:1:5"]);
    assert_eq!(diagnostics[0].message, "mapping values are not allowed in this context");
}

#[test]
fn documents_that_are_not_objects() {
    let (_, diagnostics) = load(&files(&[
            ("a.yaml", "just text\n---\n- a list\n---\nmetadata: {name: x}\n"),
            ("b.yaml", "kind: Group\nkind: Group\napiVersion: waveguide.dev/v1alpha1\nmetadata: {name: x}\nspec: {}\n"),
            ("c.yaml", "apiVersion: waveguide.dev/v1alpha1\nkind: Group\nmetadata: {name: x}\nspec:\n  labels: {a: b, a: c}\n"),
        ]));
    assert_eq!(
        codes(&diagnostics),
        ["WG003 a.yaml:1:1", "WG003 a.yaml:3:1", "WG003 a.yaml:5:1", "WG009 b.yaml:2:1", "WG009 c.yaml:5:18"],
        "{diagnostics:#?}"
    );
}

#[test]
fn crlf_and_byte_order_mark() {
    let text = "\u{feff}apiVersion: waveguide.dev/v1alpha1\r\nkind: Group\r\nmetadata: {name: eu}\r\nspec:\r\n  parent: world\r\n---\r\napiVersion: waveguide.dev/v1alpha1\r\nkind: DeviceSet\r\nmetadata: {name: s}\r\nspec:\r\n  group: eu\r\n  devices:\r\n    - id: a\r\n";
    let (docs, diagnostics) = load(&files(&[("w.yaml", text)]));
    assert!(diagnostics.is_empty(), "{diagnostics:?}");
    assert_eq!(docs.groups[0].locate("spec.parent").to_string(), "w.yaml:5:11");
    assert_eq!(docs.device_sets[0].location.to_string(), "w.yaml:7:1");
    assert_eq!(docs.device_sets[0].value.spec.devices[0].id, "a");
    assert_eq!(docs.device_sets[0].locate("spec.devices[0].id").to_string(), "w.yaml:13:11");
}

const HEAD: &str = "apiVersion: waveguide.dev/v1alpha1\n";

fn group(rest: &str) -> String {
    format!("{HEAD}kind: Group\n{rest}")
}

#[test]
fn errors_are_reported_where_they_are() {
    let at = |text: &str| {
        let (_, diagnostics) = load(&files(&[("f.yaml", text)]));
        assert_eq!(diagnostics.len(), 1, "{diagnostics:#?}");
        (format!("{} {}", diagnostics[0].code, diagnostics[0].location), diagnostics[0].message.clone())
    };
    // A control character: where it is, not at line 1.
    let (found, message) = at(&group("metadata: {name: a}\nspec:\n  labels: {a: \"x\u{1}y\"}\n"));
    assert_eq!(found, "WG002 f.yaml:5:17");
    assert_eq!(message, "control character U+0001 is not allowed in YAML");
    // The end of the file: at the construct left open, not past the last line.
    let (found, message) = at(&group("metadata: {name: a}\nspec:\n  labels: {a: b\n\n# end\n"));
    assert_eq!(found, "WG002 f.yaml:5:11");
    assert!(message.ends_with("while parsing a flow mapping (the document ends first)"), "{message}");
    // A duplicate key: at its second occurrence.
    assert_eq!(
        at(&group("metadata: {name: a}\nspec:\n  labels:\n    a: b\n    c: d\n    a: e\n")).0,
        "WG009 f.yaml:8:5"
    );
    assert_eq!(
        at(&group("metadata: {name: a}\nspec:\n  parent: x\n  maxConcurrent: 3\n  parent: y\n")).0,
        "WG009 f.yaml:7:3"
    );
    // A `kind` that is not a string is a wrong value, not an unknown kind.
    let (found, message) = at(&format!("{HEAD}kind: 5\nmetadata: {{name: a}}\nspec: {{}}\n"));
    assert_eq!((found.as_str(), message.as_str()), ("WG008 f.yaml:2:7", "`kind` must be a string"));
    assert_eq!(at(&format!("{HEAD}kind: \"5\"\nmetadata: {{name: a}}\nspec: {{}}\n")).0, "WG004 f.yaml:2:7");
    assert_eq!(
        at(&format!("{{{HEAD}, kind: [Group], metadata: {{name: a}}, spec: {{}}}}")).0,
        "WG008 f.yaml:2:9"
    );
}

#[test]
fn a_broken_document_whose_kind_and_name_are_readable_causes_no_cascade() {
    // Syntax errors after the name, in block and flow style: the groups are known to be
    // declared, so what refers to them is not reported as well.
    let broken = format!(
        "{}---\n{}",
        group("metadata:\n  labels: {team: a}\n  name: eu\nspec:\n  labels: [a: b\n  x: y\n"),
        group("metadata: {name: asia}\nspec: {labels: {a: \"b}}\n")
    );
    let refers = format!(
        "{}---\n{}",
        group("metadata: {name: berlin}\nspec: {parent: eu}\n"),
        group("metadata: {name: tokyo}\nspec: {parent: asia}\n")
    );
    let compilation = crate::compile::compile(&files(&[("a.yaml", &refers), ("b.yaml", &broken)]));
    assert_eq!(codes(&compilation.diagnostics), ["WG002 b.yaml:8:4", "WG002 b.yaml:13:20"]);
}

#[test]
fn merge_keys_are_applied() {
    let set = "apiVersion: waveguide.dev/v1alpha1\nkind: DeviceSet\nmetadata: {name: s}\nspec:\n  group: eu\n  labels: &common {hw: rpi4, site: berlin}\n  devices:\n    - id: a\n      labels: {<<: *common, tier: canary}\n    - id: b\n      labels:\n        <<: *common\n        hw: x86\n";
    let (docs, diagnostics) = load(&files(&[("s.yaml", set)]));
    assert!(diagnostics.is_empty(), "{diagnostics:#?}");
    let labels = |i: usize| -> Vec<(String, String)> {
        docs.device_sets[0].value.spec.devices[i].labels.clone().into_iter().collect()
    };
    let pairs = |p: &[(&str, &str)]| -> Vec<(String, String)> {
        p.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    };
    assert_eq!(labels(0), pairs(&[("hw", "rpi4"), ("site", "berlin"), ("tier", "canary")]));
    assert_eq!(labels(1), pairs(&[("hw", "x86"), ("site", "berlin")]));
    // Errors in a document with merge keys are still located, by their path.
    let bad = set.replace("tier: canary", "tier: [canary]");
    let (_, diagnostics) = load(&files(&[("s.yaml", &bad)]));
    assert_eq!(codes(&diagnostics), ["WG008 s.yaml:9:35"], "{diagnostics:#?}");
}

fn range_set(name: &str, start: u64, count: u64) -> String {
    format!(
        "apiVersion: waveguide.dev/v1alpha1\nkind: DeviceSet\nmetadata: {{name: {name}}}\nspec:\n  group: eu\n  range:\n    prefix: d-\n    start: {start}\n    count: {count}\n"
    )
}

#[test]
fn device_limits_are_checked_without_expanding_ranges() {
    let started = std::time::Instant::now();
    let huge = range_set("huge", 0, 1_000_000_000_000);
    let overflow = range_set("overflow", u64::MAX - 1, 5);
    let (docs, diagnostics) = load(&files(&[("huge.yaml", &huge), ("overflow.yaml", &overflow)]));
    assert!(docs.device_sets.is_empty());
    assert_eq!(codes(&diagnostics), ["WG216 huge.yaml:9:12", "WG217 overflow.yaml:9:12"]);
    assert!(
        diagnostics[1].message.contains("runs past the largest device number"),
        "{}",
        diagnostics[1].message
    );
    // Eleven sets at the limit: the fleet is too large, and nothing is expanded to tell.
    let sets: Vec<(String, String)> = (0..11)
        .map(|i| (format!("s{i:02}.yaml"), range_set(&format!("s{i}"), i * 1_000_000, 1_000_000)))
        .collect();
    let pairs: Vec<(&str, &str)> = sets.iter().map(|(p, t)| (p.as_str(), t.as_str())).collect();
    let compilation = crate::compile::compile(&files(&pairs));
    assert_eq!(codes(&compilation.diagnostics), ["WG216 s10.yaml:1:1"]);
    assert!(compilation.fleet.is_none());
    assert!(started.elapsed() < std::time::Duration::from_secs(1), "{:?}", started.elapsed());
}

#[test]
fn documents_over_the_size_and_depth_limits_are_refused_before_parsing() {
    let deep = group(&format!(
        "metadata: {{name: a}}\nspec: {{labels: {}{}}}\n",
        "[".repeat(100_000),
        "]".repeat(100_000)
    ));
    let started = std::time::Instant::now();
    let (_, diagnostics) = load(&files(&[("deep.yaml", &deep)]));
    assert_eq!(codes(&diagnostics), ["WG013 deep.yaml:4:78"]);
    assert!(started.elapsed() < std::time::Duration::from_secs(1), "{:?}", started.elapsed());
    let mut large = group("metadata: {name: a}\nspec: {}\n");
    large.push_str(&format!("# {}\n", "x".repeat(crate::compile::limits::MAX_DOCUMENT_BYTES)));
    let (_, diagnostics) = load(&files(&[("large.yaml", &large)]));
    assert_eq!(codes(&diagnostics), ["WG012 large.yaml:1:1"]);
}
