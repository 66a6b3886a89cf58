#!/usr/bin/env python3
"""Writes BENCHMARKS.md from the criterion results of one `make bench` run.

Usage: bench-report.py <criterion dir> <balance table file> <output>
Every figure sits beside its baseline from the same run; ratios are what count.
"""
import json
import os
import platform
import subprocess
import sys
from datetime import datetime, timezone


def median_ns(root, group, function):
    path = os.path.join(root, group, function, "new", "estimates.json")
    with open(path) as f:
        return json.load(f)["median"]["point_estimate"]


def sh(cmd):
    try:
        return subprocess.run(cmd, shell=True, capture_output=True, text=True, check=True).stdout.strip()
    except subprocess.CalledProcessError:
        return "unknown"


def machine():
    cpu = sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2").strip()
    mem = sh("awk '/MemTotal/ {printf \"%.0f GiB\", $2/1048576}' /proc/meminfo")
    return (
        f"- CPU: {cpu}, {os.cpu_count()} cores visible; memory {mem}; {platform.system()} {platform.release()}\n"
        f"- Rust: {sh('rustc --version')}\n"
        f"- Date: {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}\n"
    )


def verdict(ok):
    return "met" if ok else "**missed**"


def placement(root, balance):
    out = []
    out.append("## Placement (core)\n")
    out.append(
        "Actor id (16 bytes) -> owning member: `aether` is XXH3 + `mod shards` (precomputed reciprocal) + "
        "two array reads (`RouteTable::owner`). Baselines: the bare XXH3 of the id, and the raw `anchorhash` "
        "0.2.2 lookup of the same id (XXH3 hasher, capacity 2N). `single`: dependent lookups (latency); "
        "`batch`: 1024 independent lookups, per element. Goals: single <= 20 ns, batch <= 10 ns.\n"
    )
    out.append("| members | aether single | bare hash single | crate single | aether / bare | aether batch | bare hash batch | crate batch | goals |")
    out.append("|---|---|---|---|---|---|---|---|---|")
    for n in (10, 100, 1000):
        s = {f: median_ns(root, f"lookup_single_{n}", f) for f in ("aether", "bare_hash", "anchorhash_crate")}
        b = {f: median_ns(root, f"lookup_batch_{n}", f) / 1024 for f in ("aether", "bare_hash", "anchorhash_crate")}
        ok = s["aether"] <= 20 and b["aether"] <= 10
        out.append(
            f"| {n} | {s['aether']:.1f} ns | {s['bare_hash']:.1f} ns | {s['anchorhash_crate']:.1f} ns | "
            f"{s['aether'] / s['bare_hash']:.2f}x | {b['aether']:.2f} ns | {b['bare_hash']:.2f} ns | "
            f"{b['anchorhash_crate']:.2f} ns | {verdict(ok)} |"
        )
    out.append("")
    out.append(
        "Full re-plan of 65,536 shards after one member joins (capacity 2N): the new shard map and the "
        "moves. Baseline: 65,536 raw lookups in the `anchorhash` crate. Goal: <= 2 ms at 1000 members.\n"
    )
    out.append("| members | AnchorHash plan | Balanced plan | crate: 65,536 lookups | AnchorHash / crate | goal |")
    out.append("|---|---|---|---|---|---|")
    for n in (10, 100, 1000):
        a = median_ns(root, "plan_65536", f"AnchorHash/{n}") / 1e6
        bal = median_ns(root, "plan_65536", f"Balanced/{n}") / 1e6
        c = median_ns(root, "plan_65536", f"anchorhash_crate_lookups/{n}") / 1e6
        out.append(
            f"| {n} | {a:.2f} ms | {bal:.2f} ms | {c:.2f} ms | {a / c:.2f}x | {verdict(max(a, bal) <= 2.0)} |"
        )
    out.append("")
    out.append(
        "Balance: AnchorHash max/mean load beside the goal bound `1 + 3 sqrt(members/shards) + 0.01`; "
        "`fresh` is a StatefulSet scaled up from zero, `churn` 200 random join/leave histories (buckets "
        "removed anywhere). Balanced: max - min shards per member (goal <= 1).\n"
    )
    with open(balance) as f:
        out.append(f.read().strip())
    out.append("")
    return "\n".join(out)


def main():
    root, balance, output = sys.argv[1:4]
    doc = [
        "# Benchmarks\n",
        "Written by `make bench` (scripts/bench-report.py) from one run; each figure is measured beside its "
        "baseline in that run. Absolute numbers move with the machine, ratios much less.\n",
        "## Machine\n",
        machine(),
        "Command: `make bench` (criterion, release profile, `cargo bench -p aether-core --bench placement`, "
        "then `cargo run --release -p aether-core --example balance_report`).\n",
        placement(root, balance),
    ]
    with open(output, "w") as f:
        f.write("\n".join(doc))


if __name__ == "__main__":
    main()
