#!/usr/bin/env python3
"""Builds an OCI image archive without a container engine, from a Dockerfile's last stage.

    scripts/oci-image.py DOCKERFILE NAME OUT --base rust|python [--debs DIR] [--binary PATH ...]

The image is what DOCKERFILE's last stage builds, its FROM replaced by a base made of Debian
packages (downloaded with `apt-get download` into --debs, never from a registry):
- `rust`: the shared libraries the binaries COPY'd link (as `ldd` lists them), taken from the
  Debian packages `libc6` and `libgcc-s1` at the paths the packages give them, the same ones distroless's cc-debian12 carries; plus an
  /etc/passwd and /etc/group naming the numeric users the chart runs as (65532 nonroot, 65534
  nobody), and an empty /tmp.
- `python`: Debian 12's Python 3.11 (`python3.11-minimal`, `libpython3.11-minimal`,
  `libpython3.11-stdlib`) and the libraries its standard library links, the packages distroless's
  python3-debian12 carries, documentation left out.
- `none`: nothing (a static binary, e.g. the real node's pause image).

The last stage's COPY (`--from=build /src/...` reads the workspace's files: the builder stage's
`/src` is the workspace), ENV, WORKDIR, USER and ENTRYPOINT become the image's second layer and
its config, so the Dockerfile and the image cannot say different things. Layers are written
reproducibly (sorted, owner 0, modification time 0, gzip without a timestamp): the same inputs give
the same digests.

OUT is an OCI image layout as a tar (`oci-layout`, `index.json`, `blobs/sha256/...`): what
`ctr images import`, `kind load image-archive`, `skopeo copy oci-archive:OUT ...` and
`crane push OUT` take. The index names the image both ways those tools read: the annotations
`org.opencontainers.image.ref.name` (the tag) and `io.containerd.image.name` (the whole name).
Prints one JSON line: name, digest of the manifest, size of the archive and of each layer.
"""

import argparse
import gzip
import hashlib
import io
import json
import os
import re
import shlex
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Debian packages of each base (bookworm). `python`: what python3.11's standard library needs to
# start and to serve HTTP (no readline, dbm, Kerberos or sqlite: the SDK imports none of them).
PACKAGES = {
    "rust": ["libc6", "libgcc-s1"],
    "python": [
        "libc6",
        "libgcc-s1",
        "zlib1g",
        "libexpat1",
        "libffi8",
        "libssl3",
        "libbz2-1.0",
        "liblzma5",
        "libcrypt1",
        "libuuid1",
        "media-types",
        "libpython3.11-minimal",
        "libpython3.11-stdlib",
        "python3.11-minimal",
    ],
}
# Never in a python base: documentation, manuals, translations.
DROP = ("usr/share/doc/", "usr/share/man/", "usr/share/info/", "usr/share/lintian/", "usr/share/locale/")
PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def local(src):
    """The workspace's file for a Dockerfile's source path; `target/` is the cargo target
    directory (`CARGO_TARGET_DIR` when set)."""
    target = os.environ.get("CARGO_TARGET_DIR")
    if target and src.startswith("target/"):
        return Path(target) / src[len("target/"):]
    return ROOT / src


def fail(msg):
    print(f"oci-image: {msg}", file=sys.stderr)
    sys.exit(1)


def last_stage(dockerfile):
    """The last stage's instructions as (keyword, arguments), continuation lines joined."""
    text = Path(dockerfile).read_text()
    lines, cur = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            cur += line[:-1] + " "
            continue
        lines.append(cur + line)
        cur = ""
    stages, stage = [], None
    for line in lines:
        word, _, rest = line.partition(" ")
        word = word.upper()
        if word == "FROM":
            stage = []
            stages.append(stage)
        elif stage is not None:
            stage.append((word, rest.strip()))
    if not stages:
        fail(f"{dockerfile}: no FROM")
    return stages[-1]


def spec_of(dockerfile):
    """What the last stage asks: files to copy (source on disk, path in the image), env, workdir,
    user, entrypoint."""
    copies, env, workdir, user, entrypoint = [], [], "/", None, None
    for word, rest in last_stage(dockerfile):
        if word == "COPY":
            args = shlex.split(rest)
            from_build = any(a.startswith("--from=") for a in args)
            args = [a for a in args if not a.startswith("--")]
            *srcs, dest = args
            for src in srcs:
                if from_build:
                    if not src.startswith("/src/"):
                        fail(f"{dockerfile}: COPY --from reads the builder's /src only: {src}")
                    src = src[len("/src/"):]
                path = local(src)
                if not path.exists():
                    fail(f"{dockerfile}: COPY {src}: {path} does not exist (build it first)")
                copies.append((path, dest))
        elif word == "ENV":
            m = re.match(r"^(\w+)[= ](.*)$", rest)
            if not m:
                fail(f"{dockerfile}: ENV {rest}: one NAME=value per line")
            env.append(f"{m.group(1)}={m.group(2)}")
        elif word == "WORKDIR":
            workdir = rest
        elif word == "USER":
            if not re.match(r"^\d+(:\d+)?$", rest):
                fail(f"{dockerfile}: USER {rest}: numeric, so a kubelet can check runAsNonRoot")
            user = rest
        elif word == "ENTRYPOINT":
            entrypoint = json.loads(rest)
        else:
            fail(f"{dockerfile}: {word} is not supported in the last stage")
    if user is None or entrypoint is None:
        fail(f"{dockerfile}: the last stage needs USER and ENTRYPOINT")
    return {"copies": copies, "env": env, "workdir": workdir, "user": user, "entrypoint": entrypoint}


USED = []


def download(packages, debs):
    """The .deb of each package (the archive's current version), downloaded once into `debs`;
    each one used is named in the output."""
    debs.mkdir(parents=True, exist_ok=True)
    out = {}
    for p in packages:
        found = sorted(debs.glob(f"{p}_*.deb"))
        if not found:
            r = subprocess.run(["apt-get", "download", p], cwd=debs, capture_output=True, text=True)
            if r.returncode != 0:
                fail(f"apt-get download {p}: {r.stderr.strip()} (run `apt-get update` once)")
            found = sorted(debs.glob(f"{p}_*.deb"))
        if not found:
            fail(f"apt-get download {p} wrote no .deb")
        out[p] = found[-1]
        USED.append(found[-1].name)
    return out


def extract(debs, into):
    for deb in debs:
        subprocess.run(["dpkg-deb", "-x", str(deb), str(into)], check=True)


def needed_libraries(binaries):
    """Paths (as `ldd` resolves them, e.g. /lib/x86_64-linux-gnu/libc.so.6) the binaries load."""
    libs = set()
    for b in binaries:
        r = subprocess.run(["ldd", str(b)], capture_output=True, text=True)
        if r.returncode != 0:
            fail(f"ldd {b}: {r.stderr.strip()}")
        for line in r.stdout.splitlines():
            m = re.search(r"(/\S+)\s+\(0x", line)
            if m:
                libs.add(m.group(1))
    return sorted(libs)


class Layer:
    """A layer's files, written as a reproducible tar."""

    def __init__(self):
        self.entries = {}

    def dir(self, path, mode=0o755, owner=0):
        path = path.strip("/")
        parts = path.split("/")
        for i in range(1, len(parts) + 1):
            p = "/".join(parts[:i])
            last = i == len(parts)
            self.entries.setdefault(p, ("dir", mode if last else 0o755, owner if last else 0))

    def parent(self, path):
        if "/" in path:
            self.dir(os.path.dirname(path))

    def file(self, path, data, mode=0o644):
        path = path.strip("/")
        self.parent(path)
        self.entries[path] = ("file", mode, data)

    def link(self, path, target):
        path = path.strip("/")
        self.parent(path)
        self.entries[path] = ("symlink", 0o777, target)

    def tree(self, src, dest, keep=lambda rel: True):
        """Everything under directory `src` at `dest` (symlinks kept as links)."""
        src = Path(src)
        for p in sorted(src.rglob("*")):
            rel = p.relative_to(src).as_posix()
            if not keep(rel):
                continue
            at = f"{dest.rstrip('/')}/{rel}"
            if p.is_symlink():
                self.link(at, os.readlink(p))
            elif p.is_dir():
                self.dir(at, p.stat().st_mode & 0o7777)
            else:
                self.file(at, p.read_bytes(), p.stat().st_mode & 0o7777)

    def tar(self):
        """(uncompressed bytes, gzipped bytes)."""
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
            for path in sorted(self.entries):
                kind, mode, data = self.entries[path]
                info = tarfile.TarInfo(path)
                owner = data if kind == "dir" else 0
                info.mtime, info.uid, info.gid, info.uname, info.gname = 0, owner, owner, "", ""
                info.mode = mode
                if kind == "dir":
                    info.type = tarfile.DIRTYPE
                    t.addfile(info)
                elif kind == "symlink":
                    info.type, info.linkname = tarfile.SYMTYPE, data
                    t.addfile(info)
                else:
                    info.size = len(data)
                    t.addfile(info, io.BytesIO(data))
        raw = buf.getvalue()
        return raw, gzip.compress(raw, compresslevel=6, mtime=0)


def rust_base(binaries, debs):
    layer = Layer()
    with tempfile.TemporaryDirectory() as tmp:
        extract(download(PACKAGES["rust"], debs).values(), tmp)
        root = Path(tmp)
        for lib in needed_libraries(binaries):
            # As the packages lay them out (lib/..., lib64/...), each link followed inside them.
            at = lib.lstrip("/")
            for _ in range(8):
                p = root / at
                if not p.is_symlink():
                    break
                target = os.readlink(p)
                layer.link(at, target)
                at = target.lstrip("/") if target.startswith("/") else os.path.normpath(os.path.join(os.path.dirname(at), target))
            if not (root / at).is_file():
                fail(f"{lib} is in neither of {PACKAGES['rust']}")
            layer.file(at, (root / at).read_bytes(), 0o755)
    users(layer)
    return layer


def python_base(debs):
    layer = Layer()
    with tempfile.TemporaryDirectory() as tmp:
        extract(download(PACKAGES["python"], debs).values(), tmp)
        for top in sorted(Path(tmp).iterdir()):
            layer.tree(top, top.name, keep=lambda rel, t=top.name: not f"{t}/{rel}/".startswith(DROP))
    # python3, as Debian's python3 package and distroless name it.
    layer.link("usr/bin/python3", "python3.11")
    users(layer)
    return layer


def users(layer):
    layer.file("etc/passwd", b"root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n")
    layer.file("etc/group", b"root:x:0:\nnonroot:x:65532:\nnobody:x:65534:\n")
    layer.dir("tmp", 0o1777)
    layer.dir("home/nonroot", 0o700, owner=65532)


def app_layer(spec):
    layer = Layer()
    for src, dest in spec["copies"]:
        if src.is_dir():
            layer.tree(src, dest, keep=lambda rel: "__pycache__" not in rel)
        else:
            at = dest.rstrip("/") + "/" + src.name if dest.endswith("/") else dest
            layer.file(at, src.read_bytes(), 0o755 if os.access(src, os.X_OK) else 0o644)
    return layer


def blob(out, data):
    digest = hashlib.sha256(data).hexdigest()
    out[f"blobs/sha256/{digest}"] = data
    return f"sha256:{digest}"


def build(dockerfile, name, out, base, debs):
    spec = spec_of(dockerfile)
    binaries = [src for src, _ in spec["copies"] if src.is_file() and os.access(src, os.X_OK)]
    base_layer = {
        "rust": lambda: rust_base(binaries, debs),
        "python": lambda: python_base(debs),
        "none": Layer,
    }[base]()
    files = {"oci-layout": json.dumps({"imageLayoutVersion": "1.0.0"}).encode()}
    layers, diff_ids = [], []
    for layer in (base_layer, app_layer(spec)):
        raw, gz = layer.tar()
        diff_ids.append("sha256:" + hashlib.sha256(raw).hexdigest())
        layers.append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": blob(files, gz), "size": len(gz)})
    env = [PATH_ENV] + [e for e in spec["env"] if not e.startswith("PATH=")]
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"User": spec["user"], "Env": env, "Entrypoint": spec["entrypoint"], "WorkingDir": spec["workdir"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [
            {"created_by": f"scripts/oci-image.py: base {base} from Debian packages", "created": "1970-01-01T00:00:00Z"},
            {"created_by": f"scripts/oci-image.py: {Path(dockerfile).name}'s last stage", "created": "1970-01-01T00:00:00Z"},
        ],
    }
    config_bytes = json.dumps(config, sort_keys=True).encode()
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": blob(files, config_bytes), "size": len(config_bytes)},
        "layers": layers,
    }
    manifest_bytes = json.dumps(manifest, sort_keys=True).encode()
    digest = blob(files, manifest_bytes)
    tag = name.rsplit(":", 1)[1] if ":" in name.rsplit("/", 1)[-1] else "latest"
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": digest,
            "size": len(manifest_bytes),
            "annotations": {"org.opencontainers.image.ref.name": tag, "io.containerd.image.name": name},
        }],
    }
    files["index.json"] = json.dumps(index, sort_keys=True).encode()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as t:
        dirs = sorted({str(Path(p).parent) for p in files if "/" in p} | {"blobs"})
        for d in dirs:
            info = tarfile.TarInfo(d)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 0
            t.addfile(info)
        for p in sorted(files):
            info = tarfile.TarInfo(p)
            info.size, info.mode, info.mtime = len(files[p]), 0o644, 0
            t.addfile(info, io.BytesIO(files[p]))
    print(json.dumps({
        "name": name,
        "digest": digest,
        "archive_bytes": out.stat().st_size,
        "layers_bytes": [l["size"] for l in layers],
        "user": spec["user"],
        "entrypoint": spec["entrypoint"],
        "debian_packages": sorted(set(USED)),
    }))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dockerfile")
    ap.add_argument("name", help="the image's name with its tag, e.g. ghcr.io/aether-dev/aether-node:0.1.0")
    ap.add_argument("out", help="the OCI archive to write")
    ap.add_argument("--base", choices=["rust", "python", "none"], required=True)
    ap.add_argument("--debs", default=str(Path.home() / ".cache/aether/debs"), help="where Debian packages are kept")
    a = ap.parse_args()
    build(a.dockerfile, a.name, a.out, a.base, Path(a.debs))


if __name__ == "__main__":
    main()
