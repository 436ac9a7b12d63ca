"""Reads device instructions the way the reference TUF client does.

Usage: tuf_instructions.py TUF_BASE_URL ROOT_JSON WORK_DIR DEVICE_ID...

Refreshes with python-tuf's ngclient (trusting ROOT_JSON), resolves each
devices/<id>.json through the hashed bins, downloads and verifies it, and prints one
JSON object: device id -> instruction (null when the repository has none for it).
The end-to-end test compares this with what the agents installed.
"""

import json
import pathlib
import sys

from tuf.ngclient import Updater


def main():
    base, root, work, *devices = sys.argv[1:]
    work = pathlib.Path(work)
    (work / "metadata").mkdir(parents=True, exist_ok=True)
    (work / "targets").mkdir(parents=True, exist_ok=True)
    updater = Updater(
        metadata_dir=str(work / "metadata"),
        metadata_base_url=f"{base}/metadata/",
        target_base_url=f"{base}/targets/",
        target_dir=str(work / "targets"),
        bootstrap=pathlib.Path(root).read_bytes(),
    )
    updater.refresh()
    out = {}
    for device in devices:
        info = updater.get_targetinfo(f"devices/{device}.json")
        if info is None:
            out[device] = None
            continue
        path = updater.download_target(info, filepath=str(work / "targets" / f"{device}.json"))
        out[device] = json.loads(pathlib.Path(path).read_bytes())
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
