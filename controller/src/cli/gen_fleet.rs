//! `waveguide gen-fleet`: a large, deterministic fleet repository and a matching
//! inventory snapshot, for benchmarks and load tests.
//!
//! The fleet looks like a real one scaled up: regions with maintenance windows in their
//! own time zones, sites under them, devices declared in DeviceSets (explicit lists with
//! public keys, some with their own labels), three releases, a fleet-wide policy with
//! canary waves, a higher-priority policy per the first regions, a hardware-specific hold
//! and a few pinned devices. The same arguments always write the same bytes.

use std::fmt::Write as _;
use std::fs;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use base64::Engine as _;
use clap::Args;
use sha2::Digest as _;

/// Write a large deterministic fleet repository and inventory snapshot.
#[derive(Debug, Args)]
pub struct GenFleetArgs {
    /// Number of devices.
    #[arg(long)]
    pub devices: u64,
    /// Number of groups (regions and sites together).
    #[arg(long, default_value_t = 100)]
    pub groups: u32,
    /// Directory to write the fleet into (created; must be empty or absent).
    #[arg(long)]
    pub out: PathBuf,
    /// Seed of the generator: same seed, same fleet.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Where to write the inventory snapshot (JSON). Default: `<out>.inventory.json`
    /// next to the fleet directory.
    #[arg(long)]
    pub inventory: Option<PathBuf>,
    /// At most this many devices per DeviceSet document (large sites are split across
    /// several files so they load in parallel).
    #[arg(long, default_value_t = 5000)]
    pub set_size: u64,
}

/// Runs `waveguide gen-fleet`.
pub fn run(args: &GenFleetArgs) -> ExitCode {
    match generate(args) {
        Ok(summary) => {
            println!("{summary}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// splitmix64: a tiny, well-known generator, enough for reproducible test data.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// True with probability `per_mille`/1000.
    fn chance(&mut self, per_mille: u64) -> bool {
        self.next() % 1000 < per_mille
    }
}

const HEADER: &str = "apiVersion: waveguide.dev/v1alpha1\n";
const TIME_ZONES: [&str; 6] = [
    "Europe/Berlin",
    "America/Chicago",
    "Asia/Tokyo",
    "Australia/Sydney",
    "America/Sao_Paulo",
    "Africa/Lagos",
];

fn write_file(path: &Path, text: &str) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    fs::write(path, text).map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))
}

fn generate(args: &GenFleetArgs) -> anyhow::Result<String> {
    anyhow::ensure!(args.devices > 0, "--devices must be at least 1");
    anyhow::ensure!(args.groups > 0, "--groups must be at least 1");
    anyhow::ensure!(args.set_size > 0, "--set-size must be at least 1");
    if args.out.exists() && fs::read_dir(&args.out)?.next().is_some() {
        anyhow::bail!("{} is not empty", args.out.display());
    }
    let mut random = Random(args.seed);

    // Hierarchy: one region per 25 groups (at least one), the rest are sites spread
    // over the regions. Devices live in sites (in the region itself when there are none).
    let regions = (args.groups / 25).max(1);
    let sites = args.groups - regions;
    let region_name = |r: u32| format!("region-{r:03}");
    let site_name = |s: u32| format!("site-{s:05}");
    let mut text = String::new();
    for r in 0..regions {
        let _ = write!(
            text,
            "{}{HEADER}kind: Group\nmetadata:\n  name: {}\nspec:\n  labels:\n    region: {}\n  maintenanceWindows:\n    - schedule: \"0 2 * * *\"\n      duration: 3h\n      timeZone: {}\n  maxConcurrent: 5000\n",
            if r == 0 { "" } else { "---\n" },
            region_name(r),
            region_name(r),
            TIME_ZONES[r as usize % TIME_ZONES.len()],
        );
    }
    write_file(&args.out.join("groups/regions.yaml"), &text)?;
    text.clear();
    for s in 0..sites {
        let _ = write!(
            text,
            "{}{HEADER}kind: Group\nmetadata:\n  name: {}\nspec:\n  parent: {}\n  labels:\n    site: {}\n",
            if s == 0 { "" } else { "---\n" },
            site_name(s),
            region_name(s % regions),
            site_name(s),
        );
        if s % 7 == 0 {
            text.push_str("  maxConcurrent: 50\n");
        }
    }
    if sites > 0 {
        write_file(&args.out.join("groups/sites.yaml"), &text)?;
    }

    let releases = [
        ("os-1-0-0", "1.0.0", None),
        ("os-1-1-0", "1.1.0", None),
        ("os-2-0-0", "2.0.0", Some("[rpi4, cm4]")),
    ];
    for (name, version, compatible) in releases {
        let mut doc =
            format!("{HEADER}kind: Release\nmetadata:\n  name: {name}\nspec:\n  version: {version}\n");
        if let Some(values) = compatible {
            let _ = write!(
                doc,
                "  compatible:\n    matchExpressions:\n      - {{key: hw, operator: In, values: {values}}}\n"
            );
        }
        let file = format!("os-{version}.img");
        let digest = hex::encode(sha2::Sha256::digest(file.as_bytes()));
        let _ = write!(
            doc,
            "  artifacts:\n    - name: {file}\n      url: https://downloads.example.com/{file}\n      sha256: {digest}\n      length: 412337152\n"
        );
        write_file(&args.out.join(format!("releases/{name}.yaml")), &doc)?;
    }

    let waves = "    waves:\n      - name: canary\n        count: 50\n        selector: {matchLabels: {tier: canary}}\n        bake: 4h\n      - {name: pilot, percent: 1, bake: 12h}\n      - {name: early, percent: 10, bake: 24h}\n      - {name: rest}\n";
    let mut policies = format!(
        "{HEADER}kind: Policy\nmetadata:\n  name: fleet\nspec:\n  selector: {{}}\n  release: os-1-1-0\n  rollout:\n    order: spread\n{waves}    approval: manual\n"
    );
    let early_regions = regions.div_ceil(4);
    let groups: Vec<String> = (0..early_regions).map(region_name).collect();
    let _ = write!(
        policies,
        "---\n{HEADER}kind: Policy\nmetadata:\n  name: early-regions\nspec:\n  selector:\n    groups: [{}]\n  release: os-2-0-0\n  priority: 10\n  rollout:\n    order: hierarchy\n{waves}",
        groups.join(", ")
    );
    let _ = write!(
        policies,
        "---\n{HEADER}kind: Policy\nmetadata:\n  name: x86-hold\nspec:\n  selector:\n    matchLabels: {{hw: x86}}\n  release: os-1-0-0\n  priority: 20\n  allowDowngrade: true\n"
    );
    write_file(&args.out.join("policies/policies.yaml"), &policies)?;

    // Devices, and their inventory entries as we go.
    let inventory_path = args.inventory.clone().unwrap_or_else(|| {
        let mut name = args.out.file_name().map(|n| n.to_os_string()).unwrap_or_default();
        name.push(".inventory.json");
        args.out.with_file_name(name)
    });
    if let Some(dir) = inventory_path.parent() {
        fs::create_dir_all(dir)?;
    }
    let mut inventory = BufWriter::new(fs::File::create(&inventory_path)?);
    inventory.write_all(b"{\"capturedAt\": \"2026-11-20T09:00:00Z\", \"devices\": {")?;
    let mut first_report = true;

    let leaves: Vec<String> =
        if sites > 0 { (0..sites).map(site_name).collect() } else { (0..regions).map(region_name).collect() };
    let per_leaf = args.devices / leaves.len() as u64;
    let extra = args.devices % leaves.len() as u64;
    let mut key = [0u8; 32];
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut device_number = 0u64;
    let mut pinned = 0;
    for (leaf_ix, leaf) in leaves.iter().enumerate() {
        let count = per_leaf + u64::from((leaf_ix as u64) < extra);
        let mut written = 0;
        let mut part = 0;
        while written < count {
            let size = (count - written).min(args.set_size);
            let mut doc = format!(
                "{HEADER}kind: DeviceSet\nmetadata:\n  name: {leaf}-{part}\nspec:\n  group: {leaf}\n  labels:\n    hw: rpi4\n  devices:\n"
            );
            for _ in 0..size {
                let id = format!("{leaf}-d{device_number:07}");
                for chunk in key.chunks_mut(8) {
                    chunk.copy_from_slice(&random.next().to_le_bytes());
                }
                let _ = write!(doc, "    - id: {id}\n      publicKey: {}\n", b64.encode(key));
                let hw = match random.next() % 100 {
                    0..=14 => Some("cm4"),
                    15..=16 => Some("x86"),
                    _ => None,
                };
                let canary = random.chance(2);
                match (hw, canary) {
                    (Some(hw), true) => {
                        let _ = writeln!(doc, "      labels: {{hw: {hw}, tier: canary}}");
                    }
                    (Some(hw), false) => {
                        let _ = writeln!(doc, "      labels: {{hw: {hw}}}");
                    }
                    (None, true) => doc.push_str("      labels: {tier: canary}\n"),
                    (None, false) => {}
                }
                if device_number % 10_000 == 9_999 {
                    doc.push_str("      pin: os-1-0-0\n");
                    pinned += 1;
                }
                // Discovered state: 5% never reported, 60% on 1.0.0, 30% on 1.1.0, some failed.
                let roll = random.next() % 100;
                if roll >= 5 {
                    let (release, version) =
                        if roll < 65 { ("os-1-0-0", "1.0.0") } else { ("os-1-1-0", "1.1.0") };
                    let state = if random.chance(10) { "failed" } else { "installed" };
                    write!(
                        inventory,
                        "{}\n\"{id}\": {{\"release\": \"{release}\", \"version\": \"{version}\", \"state\": \"{state}\", \"healthy\": true, \"lastSeen\": \"2026-11-20T08:{:02}:00Z\"}}",
                        if first_report { "" } else { "," },
                        device_number % 60
                    )?;
                    first_report = false;
                }
                device_number += 1;
            }
            write_file(&args.out.join(format!("devices/{leaf}/set-{part:03}.yaml")), &doc)?;
            written += size;
            part += 1;
        }
    }
    inventory.write_all(b"\n}}\n")?;
    inventory.flush()?;
    Ok(format!(
        "wrote {} devices ({pinned} pinned) in {} groups to {}, inventory to {}",
        args.devices,
        regions + sites,
        args.out.display(),
        inventory_path.display()
    ))
}
