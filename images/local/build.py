#!/usr/bin/env python3
"""Write a single-layer OCI image archive with no registry and no Docker: `ctr images import` loads it.

Two images, for a node that runs pods offline (the end-to-end tests' real node):

- `pause`: the sandbox image, one static binary (`--binary`).
- `operator`: the same, with the operator's entrypoint (`python -P -m cpt_operator`).
- `worker`: the stages' image for a node that has the project's Python environment on its disk. The layer is
  a skeleton root filesystem; the pods get /usr, the Python installation, the virtual environment and the
  checkout through hostPath mounts that the operator's worker pod template adds (see images/README.md). The
  entrypoint is the production image's: `python -P -m cpt_pipeline`, with the venv first on PATH.

Usage: build.py pause --binary PATH --out FILE [--name NAME]
       build.py worker|operator --venv DIR --out FILE [--name NAME] [--version VERSION]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import sys
import tarfile
from pathlib import Path

LAYER = "application/vnd.oci.image.layer.v1.tar"
MANIFEST = "application/vnd.oci.image.manifest.v1+json"
CONFIG = "application/vnd.oci.image.config.v1+json"
ENTRYPOINT = ["python", "-P", "-m", "cpt_pipeline"]  # the one entrypoint, as in images/worker/Dockerfile
OPERATOR_ENTRYPOINT = ["python", "-P", "-m", "cpt_operator"]  # as in images/operator/Dockerfile


def _entry(tar: tarfile.TarFile, name: str, kind: bytes, mode: int, data: bytes = b"", target: str = "") -> None:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.mtime, info.uid, info.gid = kind, mode, 0, 0, 0
    info.linkname = target
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


def skeleton(extra_files: dict[str, tuple[bytes, int]], root_mode: int = 0o700) -> bytes:
    """A deterministic layer: the usual top-level folders, merged-/usr links, passwd/group, and extra files."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        folders = (("etc", 0o755), ("tmp", 0o1777), ("usr", 0o755), ("root", root_mode), ("workspace", 0o777))
        for folder, mode in folders:
            _entry(tar, folder, tarfile.DIRTYPE, mode)
        for link in ("bin", "lib", "lib64", "sbin"):
            _entry(tar, link, tarfile.SYMTYPE, 0o777, target=f"usr/{link}")
        _entry(tar, "etc/passwd", tarfile.REGTYPE, 0o644, b"root:x:0:0:root:/root:/bin/sh\n")
        _entry(tar, "etc/group", tarfile.REGTYPE, 0o644, b"root:x:0:\n")
        for name, (data, mode) in sorted(extra_files.items()):
            _entry(tar, name, tarfile.REGTYPE, mode, data)
    return buffer.getvalue()


def _digest(blob: bytes) -> str:
    return "sha256:" + hashlib.sha256(blob).hexdigest()


def archive(out: Path, name: str, layer: bytes, config: dict[str, object]) -> None:
    """Write the OCI image layout (oci-layout, index.json, blobs) as one tar file at `out`."""
    image_config = {
        "architecture": "amd64",
        "os": "linux",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": [_digest(layer)]},
    }
    config_blob = json.dumps(image_config, sort_keys=True).encode()
    manifest_blob = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": MANIFEST,
            "config": {"mediaType": CONFIG, "digest": _digest(config_blob), "size": len(config_blob)},
            "layers": [{"mediaType": LAYER, "digest": _digest(layer), "size": len(layer)}],
        },
        sort_keys=True,
    ).encode()
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": MANIFEST,
                "digest": _digest(manifest_blob),
                "size": len(manifest_blob),
                "platform": {"architecture": "amd64", "os": "linux"},
                "annotations": {
                    "io.containerd.image.name": name,
                    "org.opencontainers.image.ref.name": name.rsplit(":", 1)[-1],
                },
            }
        ],
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        _entry(tar, "oci-layout", tarfile.REGTYPE, 0o644, b'{"imageLayoutVersion":"1.0.0"}')
        _entry(tar, "index.json", tarfile.REGTYPE, 0o644, json.dumps(index, sort_keys=True).encode())
        _entry(tar, "blobs", tarfile.DIRTYPE, 0o755)
        _entry(tar, "blobs/sha256", tarfile.DIRTYPE, 0o755)
        for blob in (layer, config_blob, manifest_blob):
            _entry(tar, "blobs/sha256/" + _digest(blob).split(":")[1], tarfile.REGTYPE, 0o644, blob)


def pause_image(binary: Path, out: Path, name: str) -> None:
    layer = skeleton({"pause": (binary.read_bytes(), 0o755)})
    archive(out, name, layer, {"Entrypoint": ["/pause"]})


def worker_image(
    venv: Path, out: Path, name: str, entrypoint: list[str] = ENTRYPOINT, version: str | None = None
) -> None:
    """The worker (or, with the operator's entrypoint, the operator) image for a node with the project's venv;
    `version` labels it (org.opencontainers.image.version), so two versions are two images (two digests)."""
    if not (venv / "bin" / "python").exists():
        raise SystemExit(f"build.py: {venv}/bin/python not found (--venv must be a virtual environment)")
    path = f"{venv.absolute()}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    config = {
        "Entrypoint": entrypoint,
        "Env": [f"PATH={path}", "PYTHONUNBUFFERED=1", "HOME=/tmp"],
        "WorkingDir": "/workspace",
    }
    if version is not None:
        config["Labels"] = {"org.opencontainers.image.version": version}
    # The node's Python may live under /root (the test machine's does): a non-root user must reach its mount.
    archive(out, name, skeleton({}, root_mode=0o755), config)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("image", choices=["pause", "worker", "operator"])
    parser.add_argument("--out", type=Path, required=True, help="the archive to write")
    parser.add_argument("--name", help="image reference (default kubecpt.local/<image>:dev)")
    parser.add_argument("--binary", type=Path, help="pause: the static pause binary")
    parser.add_argument("--venv", type=Path, help="worker, operator: the virtual environment the pods run")
    parser.add_argument("--version", help="worker, operator: the image's version label")
    args = parser.parse_args(argv)
    name = args.name or f"kubecpt.local/{args.image}:dev"
    if args.image == "pause":
        if args.binary is None:
            parser.error("pause needs --binary")
        pause_image(args.binary, args.out, name)
    else:
        if args.venv is None:
            parser.error(f"{args.image} needs --venv")
        entrypoint = ENTRYPOINT if args.image == "worker" else OPERATOR_ENTRYPOINT
        worker_image(args.venv, args.out, name, entrypoint, args.version)
    print(name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
