#!/usr/bin/env python3
"""Write an OCI image archive from a root filesystem directory, without a container daemon.

    python3 build/oci_image.py OUT.tar --rootfs DIR --name pycni/busybox:e2e \
        [--entrypoint '["/bin/sh"]'] [--cmd '["-c", "sleep 1"]'] [--env K=V ...] [--workdir /]

The archive is an OCI image layout (oci-layout, index.json, blobs/sha256/...) with one gzip layer,
files owned by root and a fixed mtime, so the same rootfs gives the same image digest. It loads with
`ctr images import OUT.tar` (the image is named by the index annotation `io.containerd.image.name`),
`kind load image-archive OUT.tar`, and `podman load -i OUT.tar`.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import platform
import stat
import tarfile

MTIME = int(os.environ.get("SOURCE_DATE_EPOCH", "0"))
ARCH = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())


def _layer(rootfs: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for dirpath, dirnames, filenames in os.walk(rootfs):
            dirnames.sort()
            for name in sorted(dirnames) + sorted(filenames):
                path = os.path.join(dirpath, name)
                info = tar.gettarinfo(path, arcname=os.path.relpath(path, rootfs))
                info.uid = info.gid = 0
                info.uname = info.gname = "root"
                info.mtime = MTIME
                if info.isreg():
                    with open(path, "rb") as f:
                        tar.addfile(info, f)
                else:
                    tar.addfile(info)
    return buf.getvalue()


def _blob(out: tarfile.TarFile, data: bytes) -> str:
    digest = hashlib.sha256(data).hexdigest()
    info = tarfile.TarInfo(f"blobs/sha256/{digest}")
    info.size, info.mtime, info.mode = len(data), MTIME, 0o644
    out.addfile(info, io.BytesIO(data))
    return f"sha256:{digest}"


def _file(out: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), MTIME, 0o644
    out.addfile(info, io.BytesIO(data))


def _canonical(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def normalize(name: str) -> tuple[str, str]:
    """Docker's reference rules: `busybox` -> docker.io/library/busybox:latest; a first component
    with a dot or a colon, or `localhost`, is a registry."""
    first, _, rest = name.partition("/")
    if not rest or ("." not in first and ":" not in first and first != "localhost"):
        name = f"docker.io/{name}" if rest else f"docker.io/library/{name}"
    if ":" not in name.rsplit("/", 1)[-1]:
        name += ":latest"
    return name, name.rsplit(":", 1)[1]


def write_image(out_path: str, rootfs: str, name: str, entrypoint: list[str] | None = None,
                cmd: list[str] | None = None, env: list[str] | None = None, workdir: str = "/") -> str:
    """Write the archive; returns the manifest digest."""
    layer = _layer(rootfs)
    gz = gzip.compress(layer, mtime=MTIME)
    config = {
        "architecture": ARCH, "os": "linux",
        "config": {"Env": env or ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                   "WorkingDir": workdir},
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{hashlib.sha256(layer).hexdigest()}"]},
        "history": [{"created_by": f"build/oci_image.py --rootfs {os.path.basename(rootfs)}"}],
    }
    if entrypoint:
        config["config"]["Entrypoint"] = entrypoint
    if cmd:
        config["config"]["Cmd"] = cmd
    tmp = out_path + ".tmp"
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as out:
        _file(out, "oci-layout", _canonical({"imageLayoutVersion": "1.0.0"}))
        layer_digest = _blob(out, gz)
        config_bytes = _canonical(config)
        config_digest = _blob(out, config_bytes)
        manifest = _canonical({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": config_digest, "size": len(config_bytes)},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                        "digest": layer_digest, "size": len(gz)}],
        })
        manifest_digest = _blob(out, manifest)
        full_name, tag = normalize(name)
        _file(out, "index.json", _canonical({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "digest": manifest_digest, "size": len(manifest),
                           "platform": {"architecture": ARCH, "os": "linux"},
                           "annotations": {"io.containerd.image.name": full_name,
                                           "org.opencontainers.image.ref.name": tag}}],
        }))
    os.replace(tmp, out_path)
    return manifest_digest


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("out")
    p.add_argument("--rootfs", required=True)
    p.add_argument("--name", required=True, help="image reference, e.g. localhost/pycni:0.1.0")
    p.add_argument("--entrypoint", type=json.loads)
    p.add_argument("--cmd", type=json.loads)
    p.add_argument("--env", action="append")
    p.add_argument("--workdir", default="/")
    a = p.parse_args(argv)
    if not stat.S_ISDIR(os.stat(a.rootfs).st_mode):
        p.error(f"{a.rootfs} is not a directory")
    digest = write_image(a.out, a.rootfs, a.name, a.entrypoint, a.cmd, a.env, a.workdir)
    print(f"{a.out}: {a.name} {digest}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
