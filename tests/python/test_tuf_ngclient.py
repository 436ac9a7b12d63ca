"""The reference TUF client (python-tuf ngclient) accepts what `waveguide tuf publish`
writes: it resolves devices/<id>.json through two levels of hashed bins over real HTTP on
127.0.0.1, downloads the instruction and finds what was published. It refuses a tampered
bin, an expired timestamp and a rolled-back snapshot."""

import datetime
import hashlib
import http.server
import json
import pathlib
import subprocess
import threading
from functools import partial

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from securesystemslib.signer import CryptoSigner
from tuf.api import exceptions
from tuf.api.metadata import Metadata, MetaFile, Root, TargetFile, Timestamp
from tuf.ngclient import Updater


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def served(tmp_path, waveguide_bin):
    """Keys, a repository sized for a million devices, and an HTTP server over it."""
    keys, repo = tmp_path / "keys", tmp_path / "repo"
    run(waveguide_bin, "keys", "init", "--dir", keys, "--root-keys", "3", "--root-threshold", "2")
    run(waveguide_bin, "tuf", "init", "--repo", repo, "--keys", keys, "--devices", "1000000")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(QuietHandler, directory=str(repo)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield Served(waveguide_bin, tmp_path, keys, repo, f"http://127.0.0.1:{server.server_address[1]}")
    server.shutdown()


class Served:
    def __init__(self, binary, tmp, keys, repo, url):
        self.binary, self.tmp, self.keys, self.repo, self.url = binary, tmp, keys, repo, url
        self.clients = 0

    def publish(self, batch, *extra):
        path = self.tmp / "batch.json"
        path.write_text(json.dumps(batch))
        out = run(self.binary, "tuf", "publish", "--repo", self.repo, "--keys", self.keys, "--batch", path, "--json", *extra)
        return json.loads(out)

    def updater(self, client_dir=None):
        """An ngclient that trusts root version 1, with its own metadata cache."""
        bootstrap = None  # a known client starts from the root it already trusts
        if client_dir is None:
            self.clients += 1
            client_dir = self.tmp / f"client-{self.clients}"
            (client_dir / "metadata").mkdir(parents=True)
            (client_dir / "targets").mkdir()
            bootstrap = (self.repo / "metadata" / "1.root.json").read_bytes()
        return client_dir, Updater(
            metadata_dir=str(client_dir / "metadata"),
            metadata_base_url=f"{self.url}/metadata/",
            target_base_url=f"{self.url}/targets/",
            target_dir=str(client_dir / "targets"),
            bootstrap=bootstrap,
        )


def run(*args):
    out = subprocess.run([str(a) for a in args], capture_output=True, text=True)
    assert out.returncode == 0, f"{args} failed:\n{out.stderr}"
    return out.stdout


def instruction(device, release):
    return {
        "device": device,
        "release": release,
        "version": "3.1.0",
        "artifacts": [{"target": f"releases/{release}/image.raucb", "sha256": "ef" * 32, "length": 2048}],
        "rollout": "autumn",
        "wave": 2,
    }


def batch(devices, release):
    return {"upserts": [instruction(d, release) for d in devices]}


DEVICES = [f"kiosk-{i:04d}" for i in range(200)]


def test_ngclient_resolves_and_downloads_device_instructions_through_the_bins(served):
    served.publish(batch(DEVICES, "r1"))
    _, updater = served.updater()
    updater.refresh()
    for device in ["kiosk-0000", "kiosk-0123", "kiosk-0199"]:
        info = updater.get_targetinfo(f"devices/{device}.json")
        assert info is not None, device
        path = updater.download_target(info)
        assert json.loads(pathlib.Path(path).read_bytes()) == instruction(device, "r1")
    assert updater.get_targetinfo("devices/not-a-device.json") is None

    # The next wave reaches a client that refreshes again.
    client_dir, _ = served.updater()
    served.publish(batch(DEVICES[:5], "r2"))
    _, updater = served.updater(client_dir)
    updater.refresh()
    info = updater.get_targetinfo("devices/kiosk-0000.json")
    assert json.loads(pathlib.Path(updater.download_target(info)).read_bytes())["release"] == "r2"


def test_ngclient_follows_targets_signed_offline_and_refuses_one_the_online_key_signed(served):
    """`targets` is signed by the offline targets keys: `keys sign-targets` signs the next
    version, the next refresh publishes it and the client follows; the same `targets`
    signed with the online key instead is refused."""
    served.publish(batch(DEVICES[:3], "r1"))
    client_dir, updater = served.updater()
    updater.refresh()
    assert "signed targets version 2" in run(served.binary, "keys", "sign-targets", "--dir", served.keys)
    report = json.loads(
        run(served.binary, "tuf", "refresh", "--repo", served.repo, "--keys", served.keys, "--margin", "1h", "--json")
    )
    assert [r["role"] for r in report["roles"]] == ["targets", "snapshot", "timestamp"], report
    _, updater = served.updater(client_dir)
    updater.refresh()
    assert updater.get_targetinfo("devices/kiosk-0001.json") is not None
    assert Metadata.from_file(str(client_dir / "metadata" / "targets.json")).signed.version == 2

    # A holder of the online key re-signs targets v3 (same content) and publishes it.
    forged = Metadata.from_file(str(served.repo / "metadata" / "2.targets.json"))
    forged.signed.version = 3
    online_publish(served, "targets", forged)
    _, updater = served.updater(client_dir)
    with pytest.raises(exceptions.UnsignedMetadataError):
        updater.refresh()


def online_publish(served, name, role=None, listed=None):
    """What a thief of the online key can do: sign `role` (metadata of role `name`) with
    the online key, or list version `listed` of `name`, in a new snapshot and timestamp
    on top of the published ones, and serve them."""
    meta = served.repo / "metadata"
    timestamp = Metadata[Timestamp].from_file(str(meta / "timestamp.json"))
    snapshot = Metadata.from_file(str(meta / f"{timestamp.signed.snapshot_meta.version}.snapshot.json"))
    if role is not None:
        role.signatures.clear()
        role.sign(online_signer(served))
        role.to_file(str(meta / f"{role.signed.version}.{name}.json"))
        listed = role.signed.version
    # The thief signs the snapshot too, so it names the file's true length and hash
    # wherever the published snapshot gives them.
    listed_bytes = (meta / f"{listed}.{name}.json").read_bytes()
    entry = snapshot.signed.meta[f"{name}.json"]
    entry.version = listed
    if entry.length is not None:
        entry.length = len(listed_bytes)
    if entry.hashes:
        entry.hashes = {"sha256": hashlib.sha256(listed_bytes).hexdigest()}
    snapshot.signed.version += 1
    snapshot.signatures.clear()
    snapshot.sign(online_signer(served))
    snap_bytes = snapshot.to_bytes()
    (meta / f"{snapshot.signed.version}.snapshot.json").write_bytes(snap_bytes)
    timestamp.signed.version += 1
    timestamp.signed.snapshot_meta = MetaFile(
        version=snapshot.signed.version, length=len(snap_bytes), hashes={"sha256": hashlib.sha256(snap_bytes).hexdigest()}
    )
    timestamp.signatures.clear()
    timestamp.sign(online_signer(served))
    timestamp.to_file(str(meta / "timestamp.json"))


RELEASE = """apiVersion: waveguide.dev/v1alpha1
kind: Release
metadata:
  name: {name}
spec:
  version: 3.1.0
  artifacts:
    - name: image.raucb
      url: https://cdn.example.com/{name}/image.raucb
      sha256: "{sha}"
      length: 2048
"""


def test_only_the_release_keys_can_list_an_artifact(served):
    """`release sign` lists the fleet's Release artifacts; the controller publishes the
    signed file as it is. A thief of the online key who lists a malicious artifact in a
    `releases` of their own, or serves an older `releases`, is refused by the client; the
    controller refuses a replayed file."""
    fleet = served.tmp / "fleet"
    fleet.mkdir()
    (fleet / "releases.yaml").write_text(RELEASE.format(name="r1", sha="ef" * 32))
    out = run(served.binary, "release", "sign", "--keys", served.keys, fleet / "releases.yaml")
    assert f"signed releases version 2: 1 releases, 1 artifacts, written to {fleet / 'releases.json'}" in out, out
    v2 = (fleet / "releases.json").read_bytes()
    report = served.publish(batch(DEVICES[:3], "r1"), "--releases", fleet / "releases.json")
    assert (served.repo / "metadata" / "2.releases.json").read_bytes() == v2
    client_dir, updater = served.updater()
    updater.refresh()
    info = updater.get_targetinfo("releases/r1/image.raucb")
    assert info.length == 2048 and info.hashes["sha256"] == "ef" * 32
    device = json.loads(pathlib.Path(updater.download_target(updater.get_targetinfo("devices/kiosk-0001.json"))).read_bytes())
    assert device["artifacts"][0]["target"] == "releases/r1/image.raucb"

    # The controller refuses the same file again (a replay), and writes nothing.
    before = sorted(p.name for p in (served.repo / "metadata").iterdir())
    path = served.tmp / "empty.json"
    path.write_text("{}")
    args = ["tuf", "publish", "--repo", served.repo, "--keys", served.keys, "--batch", path, "--releases", fleet / "releases.json"]
    out = subprocess.run([served.binary, *map(str, args)], capture_output=True, text=True)
    assert out.returncode != 0 and "version 2 is not above the published version 2" in out.stderr, out.stderr
    assert sorted(p.name for p in (served.repo / "metadata").iterdir()) == before

    # An older `releases`, genuinely signed, listed again: the client refuses the rollback.
    online_publish(served, "releases", listed=1)
    _, updater = served.updater(client_dir)
    with pytest.raises(exceptions.BadVersionNumberError):
        updater.refresh()

    # A malicious artifact listed with the online key, and an instruction pointing to it.
    evil = Metadata.from_bytes(v2)
    evil.signed.version = 3
    evil.signed.targets["releases/evil/image.raucb"] = TargetFile(
        length=4096, hashes={"sha256": "66" * 32}, path="releases/evil/image.raucb"
    )
    online_publish(served, "releases", evil)
    told = instruction("kiosk-0002", "evil")
    told["artifacts"][0]["sha256"], told["artifacts"][0]["length"] = "66" * 32, 4096
    online_publish_instruction(served, told)
    _, updater = served.updater()
    updater.refresh()  # snapshot, timestamp and bins are the online key's to sign
    info = updater.get_targetinfo("devices/kiosk-0002.json")
    assert json.loads(pathlib.Path(updater.download_target(info)).read_bytes())["release"] == "evil"
    with pytest.raises(exceptions.UnsignedMetadataError):
        updater.get_targetinfo("releases/evil/image.raucb")


def online_publish_instruction(served, told):
    """The online key may still publish any instruction: through `tuf publish`."""
    path = served.tmp / "evil.json"
    path.write_text(json.dumps({"upserts": [told]}))
    run(served.binary, "tuf", "publish", "--repo", served.repo, "--keys", served.keys, "--batch", path)


def test_ngclient_rejects_a_tampered_bin(served):
    report = served.publish(batch(DEVICES[:3], "r1"))
    leaf = next(r for r in report["roles"] if r["role"].startswith("d-"))
    path = served.repo / "metadata" / f"{leaf['version']}.{leaf['role']}.json"
    text = path.read_text()
    at = text.index('"sha256":"') + len('"sha256":"')
    path.write_text(text[:at] + ("1" if text[at] == "0" else "0") + text[at + 1 :])
    device = next(d for d in DEVICES[:3] if leaf_of(served, d) == leaf["role"])
    _, updater = served.updater()
    updater.refresh()
    with pytest.raises(exceptions.UnsignedMetadataError):
        updater.get_targetinfo(f"devices/{device}.json")


def test_publish_refuses_a_device_id_the_fleet_repository_would_refuse(served):
    """`tuf publish` follows the one rule of device ids (the compiler's, the device API's,
    the agent's): a batch with "cam 7" is refused, naming it, and nothing is written."""
    served.publish(batch(DEVICES[:3], "r1"))
    before = sorted(p.name for p in (served.repo / "metadata").iterdir())
    path = served.tmp / "bad.json"
    path.write_text(json.dumps(batch(["kiosk-0500", "cam 7"], "r2")))
    args = ["tuf", "publish", "--repo", served.repo, "--keys", served.keys, "--batch", path]
    out = subprocess.run([served.binary, *map(str, args)], capture_output=True, text=True)
    assert out.returncode != 0
    assert 'device id "cam 7" cannot be published' in out.stderr, out.stderr
    assert "a device id may hold only letters, digits, '.', '_' and '-'" in out.stderr, out.stderr
    assert sorted(p.name for p in (served.repo / "metadata").iterdir()) == before
    _, updater = served.updater()
    updater.refresh()
    assert updater.get_targetinfo("devices/kiosk-0500.json") is None


def test_expiries_take_the_duration_syntax_of_every_flag(served):
    """`--timestamp-expiry` reads durations as every other flag and document does."""
    report = served.publish(batch(DEVICES[:3], "r1"), "--timestamp-expiry", "1h 30m")
    assert report["timestamp_version"] >= 1
    timestamp = Metadata[Timestamp].from_file(str(served.repo / "metadata" / "timestamp.json"))
    left = (timestamp.signed.expires - datetime.datetime.now(datetime.timezone.utc)).total_seconds()
    assert 85 * 60 < left <= 90 * 60, left


def test_ngclient_rejects_an_expired_timestamp(served):
    served.publish(batch(DEVICES[:3], "r1"), "--timestamp-expiry=-1m")
    _, updater = served.updater()
    with pytest.raises(exceptions.ExpiredMetadataError):
        updater.refresh()


def test_ngclient_rejects_a_rolled_back_snapshot(served):
    first = served.publish(batch(DEVICES[:3], "r1"))
    second = served.publish(batch(DEVICES[:3], "r2"))
    client_dir, updater = served.updater()
    updater.refresh()  # the client now trusts the second snapshot

    # A holder of the timestamp key serves a fresh timestamp naming the older snapshot.
    meta = served.repo / "metadata"
    old_version = first["snapshot_version"]
    old = (meta / f"{old_version}.snapshot.json").read_bytes()
    forged = Metadata[Timestamp].from_file(str(meta / "timestamp.json"))
    forged.signed.version = second["timestamp_version"] + 1
    forged.signed.snapshot_meta = MetaFile(
        version=old_version, length=len(old), hashes={"sha256": hashlib.sha256(old).hexdigest()}
    )
    forged.signatures.clear()
    forged.sign(online_signer(served))
    genuine = (meta / "timestamp.json").read_bytes()
    forged.to_file(str(meta / "timestamp.json"))
    _, updater = served.updater(client_dir)
    with pytest.raises(exceptions.BadVersionNumberError):
        updater.refresh()

    # A mirror replaying an older timestamp is refused as well.
    (meta / "timestamp.json").write_bytes(genuine)
    run(served.binary, "tuf", "refresh", "--repo", served.repo, "--keys", served.keys, "--margin", "48h")
    _, updater = served.updater(client_dir)
    updater.refresh()
    (meta / "timestamp.json").write_bytes(genuine)
    _, updater = served.updater(client_dir)
    with pytest.raises(exceptions.BadVersionNumberError):
        updater.refresh()


def online_signer(served):
    root = Metadata[Root].from_file(str(served.repo / "metadata" / "root.json"))
    keyid = root.signed.roles["timestamp"].keyids[0]
    der = (served.keys / "online.pk8").read_bytes()
    # PKCS#8 v2 (with the public key), which `cryptography` does not parse: take the
    # 32-byte seed from its inner OCTET STRING.
    at = der.index(b"\x04\x22\x04\x20") + 4
    private = Ed25519PrivateKey.from_private_bytes(der[at : at + 32])
    return CryptoSigner(private, root.signed.keys[keyid])


def leaf_of(served, device):
    """The leaf bin whose hash prefixes match the device's target path."""
    digest = hashlib.sha256(f"devices/{device}.json".encode()).hexdigest()
    meta = served.repo / "metadata"
    for path in meta.glob("*.p-*.json"):
        for role in json.loads(path.read_text())["signed"]["delegations"]["roles"]:
            if any(digest.startswith(p) for p in role["path_hash_prefixes"]):
                return role["name"]
    raise AssertionError(f"no leaf for {device}")


def test_ngclient_follows_a_rebin_up_and_down(served):
    """`waveguide tuf rebin` re-partitions the devices; a client that cached the old
    bins and snapshot refreshes onto the new ones, and every device still resolves."""

    def rebin(leaves):
        out = run(served.binary, "tuf", "rebin", "--repo", served.repo, "--keys", served.keys, "--leaves", leaves, "--json")
        return json.loads(out)

    def check_all(client_dir, release):
        _, updater = served.updater(client_dir)
        updater.refresh()
        for i, device in enumerate(DEVICES):
            info = updater.get_targetinfo(f"devices/{device}.json")
            assert info is not None, device
            content = json.dumps(instruction(device, release), separators=(",", ":")).encode()
            assert info.length == len(content) and info.hashes["sha256"] == hashlib.sha256(content).hexdigest(), device
            if i % 20 == 0:
                assert json.loads(pathlib.Path(updater.download_target(info)).read_bytes()) == instruction(device, release)

    rebin(4)
    served.publish(batch(DEVICES, "r1"))
    early, _ = served.updater()
    check_all(early, "r1")  # loaded before the rebins
    targets_before = sorted(p.name for p in (served.repo / "targets" / "devices").iterdir())
    for leaves in (16, 4):
        report = rebin(leaves)
        assert report["target_files"] == 0
        assert report["devices_changed"] == len(DEVICES)
        check_all(early, "r1")
        fresh, _ = served.updater()
        check_all(fresh, "r1")
    assert sorted(p.name for p in (served.repo / "targets" / "devices").iterdir()) == targets_before
    # Roles retired by the last rebin stay listed in the snapshot (clients refuse a
    # snapshot that drops one), but nothing delegates to them.
    meta = served.repo / "metadata"
    ts = json.loads((meta / "timestamp.json").read_text())
    snap = json.loads((meta / f"{ts['signed']['meta']['snapshot.json']['version']}.snapshot.json").read_text())
    assert "d-f.json" in snap["signed"]["meta"]


def test_ngclient_after_a_prune(served):
    """`waveguide tuf prune` removes what only older snapshots named; a client that
    cached those and a fresh client both resolve and download every device's current
    instruction afterwards, and the next publish goes on."""

    def release_of(i):
        return "r3" if i < 5 else "r2" if i < 10 else "r1"

    def check_all(client_dir):
        _, updater = served.updater(client_dir)
        updater.refresh()
        for i, device in enumerate(DEVICES):
            info = updater.get_targetinfo(f"devices/{device}.json")
            assert info is not None, device
            if i < 12 or i % 20 == 0:
                path = pathlib.Path(updater.download_target(info))
                assert json.loads(path.read_bytes()) == instruction(device, release_of(i)), device

    served.publish(batch(DEVICES, "r1"))
    early, updater = served.updater()
    updater.refresh()  # caches the first bins and snapshot
    served.publish(batch(DEVICES[:10], "r2"))
    served.publish(batch(DEVICES[:5], "r3"))
    files = lambda: sorted(p.name for p in (served.repo / "targets" / "devices").iterdir())
    assert len(files()) == len(DEVICES) + 15

    out = run(served.binary, "tuf", "prune", "--repo", served.repo, "--keys", served.keys, "--keep", "1", "--json")
    report = json.loads(out)
    # r1 of the first ten devices and r2 of the first five are no longer named.
    assert report["target_files"] == 15, report
    assert report["metadata_files"] > 0, report
    assert len(files()) == len(DEVICES)
    check_all(early)
    check_all(None)
    assert served.publish(batch(DEVICES[:1], "r3"))["devices_changed"] == 0
