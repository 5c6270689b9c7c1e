"""Write the in-repo reference copy (tests/data/reference) from the original reference folder.

    python tests/data/pack_reference.py ../shared/reference tests/data/reference

Copies what the tests read: the fixtures (block stacks byte for byte; the ``fn_*`` cases packed as described in
tests/fixtures_official.py, decoding to the official tensors bit for bit), the fixtures' README (the contract),
the real clips in videos/ and umt_state_dict_keys.json, all unchanged.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fixtures_official import load_case, pack  # noqa: E402

COPIED = ["umt_state_dict_keys.json", "fixtures/README.md", "videos/bikes.mp4", "videos/carphone_distorted.mp4",
          "videos/tree.avi", "videos/Megamind_bugy.avi"]


def pack_fixture(src: Path, dst: Path) -> None:
    with safe_open(str(src), "pt") as f:
        header = f.metadata()
    meta, tensors = load_case(src)
    if meta["kind"] != "fn":
        shutil.copyfile(src, dst)
        return
    stored, info = pack(meta, tensors)
    save_file(stored, str(dst), metadata={"meta": header["meta"], "packed": json.dumps(info)})
    decoded_meta, decoded = load_case(dst)  # hashes checked on the way
    assert decoded_meta == meta and set(decoded) == set(info["sha256"])
    print(f"{dst.name}: {src.stat().st_size} -> {dst.stat().st_size} bytes; dropped (regenerated): "
          f"{sorted(set(tensors) - set(decoded))}; x_out rows stored: "
          f"{ {k[:-4]: int(v.shape[0]) for k, v in stored.items() if k.endswith('.raw')} }")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path, help="the original reference folder (../shared/reference)")
    parser.add_argument("dest", type=Path, help="tests/data/reference")
    args = parser.parse_args()
    (args.dest / "fixtures").mkdir(parents=True, exist_ok=True)
    (args.dest / "videos").mkdir(parents=True, exist_ok=True)
    for name in COPIED:
        shutil.copyfile(args.source / name, args.dest / name)
    for src in sorted((args.source / "fixtures").glob("*.safetensors")):
        pack_fixture(src, args.dest / "fixtures" / src.name)


if __name__ == "__main__":
    main()
