//! The YAML examples of `docs/formats.md` together form a valid fleet: no errors, no
//! warnings. Keeps the format documentation honest.

use waveguide::compile::{self, diagnostic};
use waveguide::source::FleetFiles;
use waveguide_tests::repo_root;

/// The contents of every fenced ```yaml block of a Markdown text.
fn yaml_blocks(markdown: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in markdown.lines() {
        match &mut current {
            None if line.trim_start() == "```yaml" => current = Some(String::new()),
            Some(block) if line.trim_start() == "```" => {
                blocks.push(std::mem::take(block));
                current = None;
            }
            Some(block) => {
                block.push_str(line);
                block.push('\n');
            }
            None => {}
        }
    }
    blocks
}

#[test]
fn format_examples_form_a_valid_fleet() {
    let markdown = std::fs::read_to_string(repo_root().join("docs/formats.md")).unwrap();
    let blocks = yaml_blocks(&markdown);
    assert!(blocks.len() >= 6, "docs/formats.md lost its examples");
    let files = FleetFiles::from_pairs(
        blocks.iter().enumerate().map(|(i, b)| (format!("example-{i}.yaml"), b.clone())),
    );
    let compilation = compile::compile(&files);
    assert!(
        compilation.diagnostics.is_empty(),
        "{}",
        diagnostic::render(&compilation.diagnostics, diagnostic::Format::Text, "")
    );
    let fleet = compilation.fleet.expect("a valid fleet compiles");
    // The range and the entries of the DeviceSet, and the Device.
    assert_eq!(fleet.devices().len(), 103);
    // Inheritance as the page describes it: the region's labels reach the devices, the
    // set's labels reach its range, an entry's labels add to the set's.
    let label = |id: &str, key: &str| {
        let device = fleet.device(id).unwrap_or_else(|| panic!("device {id}"));
        fleet.device_label(device, key).map(str::to_owned)
    };
    assert_eq!(label("berlin-s-0099", "region").as_deref(), Some("eu"));
    assert_eq!(label("berlin-s-0099", "hw").as_deref(), Some("rpi4"));
    assert_eq!(label("berlin-t-0001", "tier").as_deref(), Some("canary"));
    assert_eq!(label("berlin-t-0001", "site").as_deref(), Some("berlin"));
    assert_eq!(label("BER-LAB-0001", "hw").as_deref(), Some("x86"));
}
