#!/usr/bin/env python3
"""TUF publishing benchmark: Waveguide's publisher against python-tuf's Metadata API.

Both sides publish the same device instructions (byte-identical JSON documents, one
target `devices/<id>.json` per device, content-addressed target files, one ed25519 online
key, consistent snapshots) and each scenario runs as its own process under
`/usr/bin/time -v`, after an untimed `sync`, so wall time and peak RSS are measured the
same way for both.

  python-tuf: classic hashed bins, `targets` delegating directly to 2048 bins (the same
              number of leaves Waveguide picks for 1M devices), compact JSON; target files
              written the way Waveguide writes them (one exclusive create, one write). The
              10k wave is a random set of devices, which is how waves fall into hash-keyed
              bins, published into the repository holding its million target files.
  Waveguide:  `waveguide tuf init` + `waveguide tuf publish` (reading the batch file is
              included); the 10k wave is cut from the planner's order (the device path
              hash), so it is a contiguous range of the hash space.

Two initial-publish rows per fleet size, measured in the same run:
  metadata and target files: both sides write everything a client needs.
  metadata only: python-tuf's Metadata API alone, no target files; Waveguide publishes
              into a fresh repository whose target files are already in place, so it does
              the same metadata work plus one lookup (fstatat) per device file.

Usage (from the repository root, after `cargo build --release`):
  .venv/bin/python scripts/bench/tuf_bench.py run --devices 100000,1000000 --wave 10000
The internal subcommands (pytuf-*) are what `run` times.
"""

import argparse
import fnmatch
import hashlib
import json
import os
import pathlib
import random
import re
import shutil
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone

BINS_BITS = 11  # 2048 bins
# python-tuf does not flush to disk, so for the same work Waveguide runs without its
# flush too; the default (flushing) figures are printed after the table.
NO_SYNC = ["--no-sync"]
ROOT = pathlib.Path(__file__).resolve().parents[2]


# --- the workload, shared by both sides ------------------------------------------------

def device_id(i):
    return f"dev-{i:07d}"


def instruction(device, release, wave):
    return {
        "device": device,
        "release": release,
        "version": "1.0.0" if release == "r1" else "1.1.0",
        "artifacts": [{"target": f"releases/{release}/image.raucb", "sha256": hashlib.sha256(release.encode()).hexdigest(), "length": 104857600}],
        "rollout": f"rollout-{release}",
        "wave": wave,
    }


def content(instr):
    # Byte-identical to serde_json::to_vec of Waveguide's DeviceInstruction.
    return json.dumps(instr, separators=(",", ":")).encode()


def path_hash(device):
    return hashlib.sha256(f"devices/{device}.json".encode()).hexdigest()


def random_wave(n, wave):
    return sorted(random.Random(42).sample(range(n), wave))


def ordered_wave(n, wave):
    """A wave as the planner cuts it: consecutive devices in path-hash order."""
    order = sorted(range(n), key=lambda i: path_hash(device_id(i)))
    start = len(order) // 3
    return order[start:start + wave]


# --- python-tuf side -------------------------------------------------------------------

def pytuf_imports():
    global Metadata, Root, Targets, Snapshot, Timestamp, TargetFile, MetaFile, DelegatedRole, Delegations, CryptoSigner, JSONSerializer
    from securesystemslib.signer import CryptoSigner
    from tuf.api.metadata import (DelegatedRole, Delegations, MetaFile, Metadata, Root, Snapshot, TargetFile,
                                  Targets, Timestamp)
    from tuf.api.serialization.json import JSONSerializer


def bin_name(b):
    return f"bin-{b:03x}"


def bin_of(path_digest):
    return int(path_digest[:3], 16) >> 1


def bin_prefixes(b):
    return [f"{(b << 1) | j:03x}" for j in (0, 1)]


class PyTufRepo:
    def __init__(self, d):
        self.dir = pathlib.Path(d)
        self.meta = self.dir / "metadata"
        self.targets = self.dir / "targets"
        self.bytes_written = 0
        self.serializer = JSONSerializer(compact=True)
        from cryptography.hazmat.primitives.serialization import load_pem_private_key
        key_path = self.dir / "online.pem"
        if key_path.exists():
            self.signer = CryptoSigner(load_pem_private_key(key_path.read_bytes(), None))
        else:
            self.signer = CryptoSigner.generate_ed25519()

    def write_md(self, name, md, versioned=True):
        md.signatures.clear()
        md.sign(self.signer)
        data = md.to_bytes(self.serializer)
        fname = f"{md.signed.version}.{name}.json" if versioned else f"{name}.json"
        path = self.meta / fname
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
        self.bytes_written += len(data)
        return data

    def write_target(self, device, data, digest):
        # The same system calls as Waveguide: one exclusive create, one write, one close
        # (a content-addressed name needs no temporary file), nothing flushed.
        with open(self.targets / "devices" / f"{digest}.{device}.json", "xb") as f:
            f.write(data)
        self.bytes_written += len(data)


def expires(days):
    return datetime.now(timezone.utc).replace(microsecond=0) + timedelta(days=days)


def pytuf_initial(args):
    pytuf_imports()
    repo = PyTufRepo(args.dir)
    repo.meta.mkdir(parents=True)
    (repo.targets / "devices").mkdir(parents=True)
    (repo.dir / "online.pem").write_bytes(repo.signer.private_bytes)
    key = repo.signer.public_key
    root = Metadata(Root(expires=expires(365), consistent_snapshot=True))
    root.signed.add_key(key, "root")
    for role in ("targets", "snapshot", "timestamp"):
        root.signed.add_key(key, role)
    repo.write_md("root", root)

    nbins = 1 << BINS_BITS
    bins = [Metadata(Targets(expires=expires(7))) for _ in range(nbins)]
    for i in range(args.devices):
        dev = device_id(i)
        data = content(instruction(dev, "r1", 0))
        path = f"devices/{dev}.json"
        digest = hashlib.sha256(data).hexdigest()
        if args.target_files:
            repo.write_target(dev, data, digest)
        bins[bin_of(path_hash(dev))].signed.targets[path] = TargetFile(len(data), {"sha256": digest}, path)

    targets = Metadata(Targets(expires=expires(90)))
    roles = {bin_name(b): DelegatedRole(bin_name(b), [key.keyid], 1, True, path_hash_prefixes=bin_prefixes(b)) for b in range(nbins)}
    targets.signed.delegations = Delegations({key.keyid: key}, roles=roles)
    snapshot = Metadata(Snapshot(expires=expires(7)))
    snapshot.signed.meta["targets.json"] = MetaFile(version=1)
    repo.write_md("targets", targets)
    for b, md in enumerate(bins):
        repo.write_md(bin_name(b), md)
        snapshot.signed.meta[f"{bin_name(b)}.json"] = MetaFile(version=1)
    snap = repo.write_md("snapshot", snapshot)
    timestamp = Metadata(Timestamp(expires=expires(1)))
    timestamp.signed.snapshot_meta = MetaFile(version=1, length=len(snap), hashes={"sha256": hashlib.sha256(snap).hexdigest()})
    repo.write_md("timestamp", timestamp, versioned=False)
    print(json.dumps({"bytes_written": repo.bytes_written}))


def pytuf_wave(args):
    pytuf_imports()
    repo = PyTufRepo(args.dir)
    timestamp = Metadata[Timestamp].from_file(str(repo.meta / "timestamp.json"))
    snapshot = Metadata[Snapshot].from_file(str(repo.meta / f"{timestamp.signed.snapshot_meta.version}.snapshot.json"))
    touched = {}
    for i in random_wave(args.devices, args.wave):
        dev = device_id(i)
        data = content(instruction(dev, "r2", 1))
        digest = hashlib.sha256(data).hexdigest()
        if args.target_files:
            repo.write_target(dev, data, digest)
        b = bin_of(path_hash(dev))
        if b not in touched:
            name = bin_name(b)
            version = snapshot.signed.meta[f"{name}.json"].version
            touched[b] = Metadata[Targets].from_file(str(repo.meta / f"{version}.{name}.json"))
        path = f"devices/{dev}.json"
        touched[b].signed.targets[path] = TargetFile(len(data), {"sha256": digest}, path)
    for b, md in touched.items():
        md.signed.version += 1
        md.signed.expires = expires(7)
        repo.write_md(bin_name(b), md)
        snapshot.signed.meta[f"{bin_name(b)}.json"].version = md.signed.version
    snapshot.signed.version += 1
    snapshot.signed.expires = expires(7)
    snap = repo.write_md("snapshot", snapshot)
    timestamp.signed.version += 1
    timestamp.signed.expires = expires(1)
    timestamp.signed.snapshot_meta = MetaFile(version=snapshot.signed.version, length=len(snap), hashes={"sha256": hashlib.sha256(snap).hexdigest()})
    repo.write_md("timestamp", timestamp, versioned=False)
    print(json.dumps({"bytes_written": repo.bytes_written, "bins_rewritten": len(touched)}))


def pytuf_refresh(args):
    pytuf_imports()
    repo = PyTufRepo(args.dir)
    timestamp = Metadata[Timestamp].from_file(str(repo.meta / "timestamp.json"))
    timestamp.signed.version += 1
    timestamp.signed.expires = expires(1)
    repo.write_md("timestamp", timestamp, versioned=False)
    print(json.dumps({"bytes_written": repo.bytes_written}))


# --- Waveguide side --------------------------------------------------------------------

def write_batch(path, indices, release, wave):
    with open(path, "w") as f:
        f.write('{"upserts":[')
        for n, i in enumerate(indices):
            if n:
                f.write(",")
            f.write(json.dumps(instruction(device_id(i), release, wave), separators=(",", ":")))
        f.write("]}")


# --- measurement -----------------------------------------------------------------------

def timed(cmd):
    """Runs cmd under /usr/bin/time -v: (seconds, peak RSS in MiB, stdout). Dirty pages
    left by the previous measurement are flushed first (untimed), so that no side pays for
    the kernel writing back the other side's files."""
    os.sync()
    out = subprocess.run(["/usr/bin/time", "-v", *map(str, cmd)], capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"{cmd} failed:\n{out.stderr}")
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", out.stderr).group(1)) / 1024
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (?:(\d+):)?(\d+):([\d.]+)", out.stderr)
    seconds = int(wall.group(1) or 0) * 3600 + int(wall.group(2)) * 60 + float(wall.group(3))
    return seconds, rss, out.stdout


def waveguide_metadata_only(wg, keys, source, repo, n, batch):
    """Times Waveguide's initial publish (`tuf init` + `tuf publish`) of `batch` into a
    fresh repository whose target files are already in place (moved from `source`,
    untimed): the metadata work, comparable to python-tuf's Metadata API, which writes no
    target files; Waveguide still looks each file up (one fstatat). Moves them back."""
    t_init, rss_init, _ = timed([wg, "tuf", "init", "--repo", repo, "--keys", keys, "--devices", n])
    shutil.rmtree(repo / "targets")
    os.rename(source / "targets", repo / "targets")
    t, rss, _ = timed([wg, "tuf", "publish", "--repo", repo, "--keys", keys, "--batch", batch, *NO_SYNC])
    os.rename(repo / "targets", source / "targets")
    shutil.rmtree(repo)
    return t_init + t, max(rss_init, rss)


def check_bytes(meta, files):
    return sum((meta / f).stat().st_size for f in files)


def waveguide_check_bytes(repo, device):
    """timestamp + snapshot + targets + the online `devices` role + the parent and leaf
    bins on the device's path."""
    meta = repo / "metadata"
    ts = json.loads((meta / "timestamp.json").read_text())
    sv = ts["signed"]["meta"]["snapshot.json"]["version"]
    snap = json.loads((meta / f"{sv}.snapshot.json").read_text())["signed"]["meta"]
    digest = path_hash(device)
    files = ["timestamp.json", f"{sv}.snapshot.json"]
    role = "targets"
    while True:
        files.append(f"{snap[role + '.json']['version']}.{role}.json")
        signed = json.loads((meta / files[-1]).read_text())["signed"]
        roles = (signed.get("delegations") or {}).get("roles", [])
        target = f"devices/{device}.json"
        nxt = [r["name"] for r in roles
               if any(digest.startswith(p) for p in r.get("path_hash_prefixes", []))
               or any(fnmatch.fnmatchcase(target, p) for p in r.get("paths", []))]
        if not nxt:
            return check_bytes(meta, files), files
        role = nxt[0]


def pytuf_check_bytes(repo, device):
    meta = repo / "metadata"
    ts = json.loads((meta / "timestamp.json").read_text())
    sv = ts["signed"]["meta"]["snapshot.json"]["version"]
    snap = json.loads((meta / f"{sv}.snapshot.json").read_text())["signed"]["meta"]
    b = bin_name(bin_of(path_hash(device)))
    files = ["timestamp.json", f"{sv}.snapshot.json", f"{snap['targets.json']['version']}.targets.json", f"{snap[b + '.json']['version']}.{b}.json"]
    return check_bytes(meta, files), files


def run(args):
    work = pathlib.Path(args.workdir)
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    wg = args.waveguide
    py = sys.executable
    me = pathlib.Path(__file__).resolve()
    tf = ["--target-files"] if args.target_files else []
    rows = []
    notes = []

    def row(scenario, wg_res, py_res, wg_bytes, py_bytes):
        rows.append((scenario, wg_res, py_res, wg_bytes, py_bytes))
        print(f"{scenario}: waveguide {wg_res[0]:.2f}s {wg_res[1]:.0f}MiB {wg_bytes}B | python-tuf {py_res[0]:.2f}s {py_res[1]:.0f}MiB {py_bytes}B", file=sys.stderr)

    for n in args.devices:
        keys, repo, pyrepo = work / f"keys-{n}", work / f"wg-{n}", work / f"py-{n}"
        subprocess.run([wg, "keys", "init", "--dir", keys], check=True, capture_output=True)
        initial = work / f"initial-{n}.json"
        write_batch(initial, range(n), "r1", 0)
        t_init, rss_init, _ = timed([wg, "tuf", "init", "--repo", repo, "--keys", keys, "--devices", n, "--json"])
        init_bytes = sum(f.stat().st_size for f in (repo / "metadata").iterdir())
        t_pub, rss_pub, out = timed([wg, "tuf", "publish", "--repo", repo, "--keys", keys, "--batch", initial, "--json", *NO_SYNC])
        wg_initial = json.loads(out)
        wg_bytes = init_bytes + wg_initial["bytes_written"]
        if args.target_files:
            py_t, py_rss, py_out = timed([py, me, "pytuf-initial", "--dir", pyrepo, "--devices", n, "--target-files"])
            row(f"initial publish, {n:,} devices, metadata and target files", (t_init + t_pub, max(rss_init, rss_pub)),
                (py_t, py_rss), wg_bytes, json.loads(py_out)["bytes_written"])
            # Set aside, deleted after the last measurement: deleting a million files keeps
            # the disk busy (freeing blocks) well after `rm` returns, which would slow the
            # rows that follow.
            os.rename(pyrepo, work / f"py-files-{n}")
        # Metadata only: python-tuf writes no target files; Waveguide finds them in place.
        py_t, py_rss, py_out = timed([py, me, "pytuf-initial", "--dir", pyrepo, "--devices", n])
        t, rss = waveguide_metadata_only(wg, keys, repo, work / f"wg-meta-{n}", n, initial)
        row(f"initial publish, {n:,} devices, metadata only", (t, rss), (py_t, py_rss),
            init_bytes + wg_initial["bytes_written"] - wg_initial["target_bytes"], json.loads(py_out)["bytes_written"])
        if n == min(args.devices):
            synced = work / f"wg-sync-{n}"
            t_init, _, _ = timed([wg, "tuf", "init", "--repo", synced, "--keys", keys, "--devices", n])
            t_pub, rss_pub, _ = timed([wg, "tuf", "publish", "--repo", synced, "--keys", keys, "--batch", initial])
            notes.append(f"initial publish, {n:,} devices, Waveguide with its default flush (syncfs before the timestamp): {t_init + t_pub:.2f} s, {rss_pub:.0f} MiB")
        initial.unlink()

        if n == max(args.devices):
            wave = work / "wave.json"
            order = ordered_wave(n, args.wave)
            write_batch(wave, order, "r2", 1)
            t, rss, out = timed([wg, "tuf", "publish", "--repo", repo, "--keys", keys, "--batch", wave, "--json", *NO_SYNC])
            wg_wave = json.loads(out)
            # Each side's wave goes into its repository that holds the million target files
            # of its initial publish: creating 10,000 files in a directory of a million
            # costs the kernel far more than in an empty one.
            py_wave_repo = work / f"py-files-{n}" if args.target_files else pyrepo
            py_t, py_rss, py_out = timed([py, me, "pytuf-wave", "--dir", py_wave_repo, "--devices", n, "--wave", args.wave, *tf])
            py_wave = json.loads(py_out)
            row(f"{args.wave:,}-device wave into {n:,}", (t, rss), (py_t, py_rss), wg_wave["bytes_written"], py_wave["bytes_written"])
            bins = sum(1 for r in wg_wave["roles"] if r["role"].startswith("d-"))
            print(f"wave bins rewritten: waveguide {bins}, python-tuf {py_wave['bins_rewritten']}", file=sys.stderr)

            t, rss, out = timed([wg, "tuf", "refresh", "--repo", repo, "--keys", keys, "--margin", "48h", "--json", *NO_SYNC])
            wg_ref = json.loads(out)
            assert [r["role"] for r in wg_ref["roles"]] == ["timestamp"], wg_ref
            py_t, py_rss, py_out = timed([py, me, "pytuf-refresh", "--dir", pyrepo])
            row("timestamp refresh", (t, rss), (py_t, py_rss), wg_ref["bytes_written"], json.loads(py_out)["bytes_written"])

            # The same operations with Waveguide's default flush, on the next wave.
            order2 = ordered_wave(n, 2 * args.wave)[args.wave:]
            write_batch(wave, order2, "r2", 2)
            t, rss, out = timed([wg, "tuf", "publish", "--repo", repo, "--keys", keys, "--batch", wave, "--json"])
            notes.append(f"{args.wave:,}-device wave into {n:,}, Waveguide with its default flush: {t:.2f} s, {rss:.0f} MiB, {json.loads(out)['bytes_written'] / 1e6:.2f} MB")
            t, rss, _ = timed([wg, "tuf", "refresh", "--repo", repo, "--keys", keys, "--margin", "48h"])
            notes.append(f"timestamp refresh, Waveguide with its default flush: {t:.3f} s, {rss:.0f} MiB")

            device = device_id(order[0])
            wg_check, wg_files = waveguide_check_bytes(repo, device)
            py_check, py_files = pytuf_check_bytes(pyrepo, device)
            print(f"update check at {n:,}: waveguide {wg_check} B {wg_files}; python-tuf {py_check} B {py_files}", file=sys.stderr)
            rows.append(("update check bytes", wg_check, py_check))

            # Re-partitioning the published repository (Waveguide only: python-tuf has no
            # such operation), to twice the leaves and back.
            layout = 1 << BINS_BITS
            for leaves in (2 * layout, layout):
                t, rss, out = timed([wg, "tuf", "rebin", "--repo", repo, "--keys", keys, "--leaves", leaves, "--json", *NO_SYNC])
                notes.append(f"tuf rebin of {n:,} devices to {leaves:,} leaves: {t:.2f} s, {rss:.0f} MiB, {json.loads(out)['target_files']} target files written")

            # Pruning what the last two snapshots no longer name (Waveguide only): the old
            # instruction files of both waves, and every superseded metadata version.
            t, rss, out = timed([wg, "tuf", "prune", "--repo", repo, "--keys", keys, "--keep", "2", "--json"])
            pruned = json.loads(out)
            notes.append(f"tuf prune --keep 2 of {n:,} devices after two waves and two rebins: {t:.2f} s, {rss:.0f} MiB, "
                         f"removed {pruned['metadata_files']:,} metadata files and {pruned['target_files']:,} device files "
                         f"({pruned['bytes'] / 1e6:.1f} MB)")

    for aside in work.glob("py-files-*"):
        subprocess.run(["rm", "-rf", str(aside)], check=True)  # faster than shutil at 1M files
    print(markdown(rows, args))
    print()
    for note in notes:
        print(f"- {note}")


def markdown(rows, args):
    lines = ["| scenario | Waveguide time | python-tuf time | speed-up | Waveguide peak RSS | python-tuf peak RSS | Waveguide bytes written | python-tuf bytes written | bytes ratio |",
             "|---|---|---|---|---|---|---|---|---|"]
    extra = []
    for r in rows:
        if r[0] == "update check bytes":
            extra.append(f"One update check (timestamp + snapshot + every role on the device's path): Waveguide {r[1]:,} bytes, python-tuf classic bins {r[2]:,} bytes.")
            continue
        name, (wt, wr), (pt, pr), wb, pb = r
        lines.append(f"| {name} | {wt:.2f} s | {pt:.2f} s | {pt / wt:.1f}× | {wr:.0f} MiB | {pr:.0f} MiB | {wb / 1e6:.2f} MB | {pb / 1e6:.2f} MB | {pb / max(wb, 1):.1f}× |")
    return "\n".join(lines + [""] + extra)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run both sides and print a Markdown table")
    r.add_argument("--devices", default="100000,1000000", type=lambda s: [int(x) for x in s.split(",")])
    r.add_argument("--wave", type=int, default=10000)
    r.add_argument("--workdir", default=str(ROOT / "target" / "tuf-bench"))
    r.add_argument("--waveguide", default=str(ROOT / "target" / "release" / "waveguide"))
    r.add_argument("--no-target-files", dest="target_files", action="store_false",
                   help="skip the rows where python-tuf writes target files (metadata-only rows only)")
    for name in ("pytuf-initial", "pytuf-wave", "pytuf-refresh"):
        s = sub.add_parser(name)
        s.add_argument("--dir", required=True)
        s.add_argument("--devices", type=int, default=0)
        s.add_argument("--wave", type=int, default=0)
        s.add_argument("--target-files", action="store_true")
    args = p.parse_args()
    {"run": run, "pytuf-initial": pytuf_initial, "pytuf-wave": pytuf_wave, "pytuf-refresh": pytuf_refresh}[args.cmd](args)


if __name__ == "__main__":
    main()
