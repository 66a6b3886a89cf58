#!/usr/bin/env python3
"""Checks each image `make images` wrote against its Dockerfile, so the two never say different
things: the image's user, entrypoint and environment are the Dockerfile's last stage's USER,
ENTRYPOINT and ENV, and every file its COPY lines name is in the image with the same bytes (a
builder stage's `/src/...` is the workspace). Reads only the archives and the Dockerfiles.

    scripts/check-images.py DOCKERFILE=ARCHIVE ...
"""

import gzip
import io
import json
import os
import shlex
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def archive(path):
    with tarfile.open(path) as t:
        files = {m.name: t.extractfile(m).read() for m in t.getmembers() if m.isfile()}
    index = json.loads(files["index.json"])
    blob = lambda d: files["blobs/sha256/" + d.split(":", 1)[1]]
    manifest = json.loads(blob(index["manifests"][0]["digest"]))
    config = json.loads(blob(manifest["config"]["digest"]))
    content = {}
    for layer in manifest["layers"]:
        with tarfile.open(fileobj=io.BytesIO(gzip.decompress(blob(layer["digest"])))) as t:
            for m in t.getmembers():
                if m.isfile():
                    content["/" + m.name] = t.extractfile(m).read()
    return config["config"], content


def last_stage(dockerfile):
    lines = [l.strip() for l in Path(dockerfile).read_text().splitlines()]
    lines = [l for l in lines if l and not l.startswith("#")]
    start = max(i for i, l in enumerate(lines) if l.upper().startswith("FROM "))
    return lines[start + 1:]


def check(dockerfile, path):
    config, content = archive(path)
    problems = []
    want_env = []
    for line in last_stage(dockerfile):
        word, _, rest = line.partition(" ")
        word = word.upper()
        if word == "USER" and config.get("User") != rest:
            problems.append(f"USER {rest}, the image runs as {config.get('User')!r}")
        elif word == "ENTRYPOINT" and config.get("Entrypoint") != json.loads(rest):
            problems.append(f"ENTRYPOINT {rest}, the image's is {config.get('Entrypoint')}")
        elif word == "ENV":
            want_env.append(rest.replace(" ", "=", 1) if "=" not in rest.split()[0] else rest)
        elif word == "COPY":
            args = [a for a in shlex.split(rest) if not a.startswith("--")]
            *srcs, dest = args
            for src in srcs:
                rel = src[len("/src/"):] if src.startswith("/src/") else src
                target = os.environ.get("CARGO_TARGET_DIR")
                local = Path(target) / rel[len("target/"):] if target and rel.startswith("target/") else ROOT / rel
                pairs = (
                    [(p, f"{dest.rstrip('/')}/{p.relative_to(local).as_posix()}") for p in local.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
                    if local.is_dir()
                    else [(local, dest)]
                )
                for p, at in pairs:
                    if content.get(at) != p.read_bytes():
                        problems.append(f"COPY {src} {dest}: {at} is {'missing' if at not in content else 'different'} in the image")
    for e in want_env:
        if e not in config.get("Env", []):
            problems.append(f"ENV {e} is not in the image's {config.get('Env')}")
    return problems


def main():
    bad = 0
    for arg in sys.argv[1:]:
        dockerfile, path = arg.split("=", 1)
        problems = check(dockerfile, path)
        for p in problems:
            print(f"{path}: {p}", file=sys.stderr)
        bad += len(problems)
        print(f"{path}: {'matches' if not problems else 'differs from'} {dockerfile}")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
