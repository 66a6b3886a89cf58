#!/usr/bin/env python3
"""Writes BENCHMARKS.md from the criterion results of one `make bench` run.

Usage: bench-report.py <criterion dir> <balance table file> <output>
Every figure sits beside its baseline from the same run; ratios are what count.
"""
import json
import os
import platform
import re
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


def nats_sections(path):
    try:
        with open(path) as f:
            r = json.load(f)
    except FileNotFoundError:
        return "## NATS benchmarks\n\nNot run (target/nats-bench.json missing).\n"
    out = []
    raw = r["raw_request_reply"]
    out.append("## Routed reads vs raw NATS request/reply\n")
    runs = r["runs_ops_per_s"]

    def each(key):
        return ", ".join(f"{x:.0f}" for x in runs[key])

    out.append(
        f"{r['requests']} requests per run, {r['in_flight']} in flight, one client, two node sidecars and "
        f"nats-server on the same 2 cores; {r['rounds']} runs of each path interleaved with its baseline, the "
        "median run shown. `on the owner`: sent to the owner; `forwarded`: sent to the other node, which forwards "
        "it to the owner and relays the owner's reply bytes unchanged. Baseline: a plain "
        "NATS responder echoing 100 bytes. Goal: throughput >= 0.5x raw.\n"
    )
    out.append("| path | ops/s | p50 | p99 | throughput / raw | goal | ops/s of each run |")
    out.append("|---|---|---|---|---|---|---|")
    out.append(f"| raw request/reply | {raw['ops_per_s']:.0f} | {raw['p50_us']} us | {raw['p99_us']} us | 1.00x | | {each('raw_request_reply')} |")
    for key, label in (("read_local", "routed read, on the owner"), ("read_forwarded", "routed read, forwarded")):
        f = r[key]
        ratio = f["ops_per_s"] / raw["ops_per_s"]
        out.append(f"| {label} | {f['ops_per_s']:.0f} | {f['p50_us']} us | {f['p99_us']} us | {ratio:.2f}x | {verdict(ratio >= 0.5)} | {each(key)} |")
    # Older reports have no client paths.
    for key, label, goal in (("client_any_node", "client, to any node (`P.req`)", None),
                             ("client_one_hop", "client watching the plan (one hop)", 0.8)):
        if key not in r:
            continue
        f = r[key]
        ratio = f["ops_per_s"] / raw["ops_per_s"]
        mark = verdict(ratio >= goal) if goal else ""
        out.append(f"| {label} | {f['ops_per_s']:.0f} | {f['p50_us']} us | {f['p99_us']} us | {ratio:.2f}x | {mark} | {each(key)} |")
    out.append("")
    if "client_one_hop" in r:
        out.append(
            "The client rows go through aether's Rust client (`Client`): it encodes each request and decodes "
            "each reply, which the raw rows do not. `to any node`: every request to `P.req` (the queue group "
            "picks a node; half the actors' requests are forwarded). `one hop`: the client watches the plan "
            "bucket and sends each request to its actor's owner (`Client::watching_plan`). Goal (issue 18): "
            ">= 0.8x raw request/reply.\n"
        )
    js = r["raw_jetstream_publish"]
    relay = r["raw_relay_jetstream"]
    cmd = r["command_local"]
    ratio = cmd["ops_per_s"] / js["ops_per_s"]
    out.append("## Routed commands vs raw JetStream publish\n")
    out.append(
        "A `counter` command over 100 actors, sent to the owner: decide, append one ~120-byte record with "
        "the expected-sequence and message-id headers, await the ack, reply. Baseline: JetStream publish+ack "
        "of 120 bytes (file storage). Goal: throughput >= 0.8x raw. For scale, `raw relay`: plain NATS "
        "request/reply to a responder that publishes the payload to JetStream and replies after the ack, "
        "the least any sidecar in the path costs (no decoding, no state, no fencing).\n"
    )
    out.append("| path | ops/s | p50 | p99 | throughput / raw | goal | ops/s of each run |")
    out.append("|---|---|---|---|---|---|---|")
    out.append(f"| raw JetStream publish+ack | {js['ops_per_s']:.0f} | {js['p50_us']} us | {js['p99_us']} us | 1.00x | | {each('raw_jetstream_publish')} |")
    out.append(f"| raw relay: request/reply + publish+ack | {relay['ops_per_s']:.0f} | {relay['p50_us']} us | {relay['p99_us']} us | {relay['ops_per_s'] / js['ops_per_s']:.2f}x | | {each('raw_relay_jetstream')} |")
    out.append(f"| routed command | {cmd['ops_per_s']:.0f} | {cmd['p50_us']} us | {cmd['p99_us']} us | {ratio:.2f}x | {verdict(ratio >= 0.8)} | {each('command_local')} |")
    out.append("")
    out.append("## Shard migration and per-actor unavailability\n")
    m0 = r["migrations"][0]
    out.append(
        f"One shard of `doc` actors with 1 KB of state moves between two nodes. Throughput: the median of "
        f"{m0['quiet_moves']} moves with nothing else running (every actor read before each move, so each "
        "move captures live actors), move time being the source's, from its start (the copy round of a shard of 256 actors or more, then the pause) to the destination's commit "
        "(whole milliseconds, so the 1,000-actor figure is coarse). Baseline: the same bytes as 512 KiB NATS "
        "request/replies between two plain clients, run after each move, median. Then "
        f"{m0['loaded_moves']} moves while 8 readers keep reading the moving actors and 4 read actors of other "
        "shards: `under readers` is their median move time, and the read latencies during those moves are the "
        "unavailability (`max` is the longest any read waited). Goals (issue 33): >= 0.9x raw bytes/s; "
        "unavailability p99 <= 5 ms and max <= 20 ms.\n"
    )
    out.append("| actors | move | actors/s | MB/s | raw MB/s | bytes/s / raw | bytes goal | under readers | read p50 | read p99 | read max | unavailability goal |")
    out.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for m in r["migrations"]:
        ratio = m["bytes_per_s"] / m["raw_bytes_per_s"]
        unavailable = verdict(m["read_during_move_p99_us"] <= 5_000 and m["read_during_move_max_us"] <= 20_000)
        out.append(
            f"| {m['actors']} | {m['move_ms']:.0f} ms | {m['actors_per_s']:.0f} | {m['bytes_per_s'] / 1e6:.1f} | "
            f"{m['raw_bytes_per_s'] / 1e6:.1f} | {ratio:.2f}x | {verdict(ratio >= 0.9)} | {m['loaded_move_ms']:.0f} ms | "
            f"{m['read_during_move_p50_us'] / 1000:.1f} ms | {m['read_during_move_p99_us'] / 1000:.1f} ms | "
            f"{m['read_during_move_max_us'] / 1000:.1f} ms | {unavailable} |"
        )
    out.append("")
    out.append("Each move, alone, and its raw baseline (ms):\n")
    for m in r["migrations"]:
        moves = ", ".join(f"{x:.0f}" for x in m["moves_ms"])
        raw = ", ".join(f"{x:.1f}" for x in m["raw_ms"])
        out.append(f"- {m['actors']} actors: moves {moves}; raw {raw}")
    out.append("")
    out.append("## Actors that do not move, during a rebalance\n")
    out.append(
        "4 readers of counter actors in other shards, for 300 ms before each move under readers (baseline) and "
        "from the plan's publication until that move is done, samples pooled over those moves. Goal: p99 "
        "during <= 1.5x p99 before.\n"
    )
    out.append("| move of | p50 before | p99 before | p50 during | p99 during | samples during | p99 during / before | goal |")
    out.append("|---|---|---|---|---|---|---|---|")
    for m in r["migrations"]:
        ratio = m["steady_during_p99_us"] / max(m["steady_before_p99_us"], 1)
        out.append(
            f"| {m['actors']} actors | {m['steady_before_p50_us'] / 1000:.2f} ms | {m['steady_before_p99_us'] / 1000:.2f} ms | "
            f"{m['steady_during_p50_us'] / 1000:.2f} ms | {m['steady_during_p99_us'] / 1000:.2f} ms | "
            f"{m['steady_during_samples']} | {ratio:.2f}x | {verdict(ratio <= 1.5)} |"
        )
    out.append("")
    out.append(missed(r))
    return "\n".join(out)


def missed(r):
    """Each missed goal of this run: by how much, and what limits it."""
    raw_rr, js = r["raw_request_reply"]["ops_per_s"], r["raw_jetstream_publish"]["ops_per_s"]
    rows = []
    fwd = r["read_forwarded"]["ops_per_s"] / raw_rr
    if fwd < 0.5:
        rows.append(
            f"- Forwarded read: {fwd:.2f}x raw, {100 * (1 - fwd / 0.5):.0f}% short of 0.5x. It crosses nats-server "
            "four times where the baseline crosses it twice, on the same two cores as the server; a client that "
            "sends to the owner (one hop) is the fast path. Passing the request on with the caller's reply "
            "subject (three crossings) reached 0.42-0.54x in trial runs (2026-11-26), but when the owner is "
            "gone NATS tells only the publisher (no responders), so callers would wait for their own timeout "
            "(10 s in the client) instead of an `unavailable` answer at once; the relay was kept, and it now "
            "passes the owner's reply bytes through without decoding them.")
    hop = r.get("client_one_hop")
    if hop and hop["ops_per_s"] / raw_rr < 0.8:
        ratio = hop["ops_per_s"] / raw_rr
        rows.append(
            f"- One-hop client read: {ratio:.2f}x raw, {100 * (1 - ratio / 0.8):.0f}% short of 0.8x. The raw "
            "baseline echoes bytes; the client encodes a request and decodes a reply, and the node decodes, "
            "routes, reads the actor and encodes its reply, all on the same two cores as nats-server and the "
            "load generator.")
    cmd = r["command_local"]["ops_per_s"] / js
    if cmd < 0.8:
        relay = r["raw_relay_jetstream"]["ops_per_s"] / js
        rows.append(
            f"- Routed command: {cmd:.2f}x raw JetStream, {100 * (1 - cmd / 0.8):.0f}% short of 0.8x. A command "
            "crosses nats-server four times (request, publish, ack, reply) where the baseline crosses it twice; "
            f"a bare relay doing only that reached {relay:.2f}x in the same run, so the hop alone puts 0.8x out "
            "of reach of any sidecar on these 2 cores. The rest is the node's work per command (decode, the "
            "behaviour's decide and apply on JSON values, the record with its expected-last-subject-sequence "
            f"and message-id headers, which the server checks per subject): {cmd / max(relay, 1e-9):.2f}x the "
            "bare relay. Appends of different actors of a shard already overlap (one in flight per actor).")
    for m in r["migrations"]:
        ratio = m["bytes_per_s"] / m["raw_bytes_per_s"]
        if ratio < 0.9:
            rows.append(
                f"- Migration of {m['actors']} actors: {ratio:.2f}x raw bytes/s, {100 * (1 - ratio / 0.9):.0f}% short of "
                "0.9x. Since 2026-12-03 a shard of 256 actors or more is copied while it is still served and then "
                "paused only for what changed meanwhile: a copy round plus the pause, more work than the "
                "whole-shard pause these figures were measured with before (0.63x on 2026-11-26), for a far "
                "shorter pause. Chunks are binary, each actor's state MessagePack written straight from the actor "
                "(about 1 us per 1 KB actor), three chunks unacked; the destination copies each actor's bytes "
                "and parses them on first use. What remains is that copying and the moved actors' memory, on "
                "one migration thread per node at nice +10 that yields every 16 actors, on 2 cores shared with "
                "nats-server and both sidecars.")
        during = m["steady_during_p99_us"] / max(m["steady_before_p99_us"], 1)
        if during > 1.5:
            rows.append(
                f"- Non-moving actors during the moves of {m['actors']}: p99 {during:.2f}x before, "
                f"{100 * (during / 1.5 - 1):.0f}% over 1.5x. The move runs on its own thread at nice +10, over its "
                "own NATS connection, and yields its core every 16 actors (trial runs of 2026-11-26: 1.8-3.9x before "
                "the yields, 0.9-2.1x after, varying from run to run with the 4 readers' p99); what remains is the CPU nats-server spends relaying the shard's megabytes and the "
                "socket copies, on the same 2 cores as everything else. Trial runs (2026-11-26): the migration "
                "thread at SCHED_IDLE gave 0.95-1.65x, but its 10,000-actor moves under readers took 175-200 ms "
                "instead of 70-100 ms, and an unprivileged thread cannot leave SCHED_IDLE, so a saturated "
                "node's moves (scaling out, when they matter most) would nearly stop; not taken.")
    if not rows:
        return ""
    return "\n".join([
        "## Missed goals: by how much, and why\n",
        *rows,
        "",
        "Profiles (session of 2026-11-26, `perf record` of the NATS bench process; nats-server is a "
        "separate process and takes ~43% of both cores' samples during the run). Migration threads, "
        "`-F 1999`, after the MessagePack and packed-actor changes: ~75 ms of CPU for both moves, most of it "
        "freeing the moved actors after the hand-off (`_int_free`, `cfree`, ~29%), `memmove` (~16%) and page "
        "faults of fresh chunk buffers; writing MessagePack ~5%. Before them, `serde_json` string escaping "
        "alone was ~21% and the 10,000-actor move took 76-192 ms. Command phase, `--call-graph dwarf`: "
        "async-nats connection handling ~37% of the process (a `writev` per message ~16%), malloc and free "
        "~19%, the shard worker ~22% of which cloning the actor's recent command ids for every command was "
        "~7% (removed: they are now updated in place). No single function stands out after that: the ratios "
        "above come from the shape of the work (hops through the server, 2 cores shared with it).\n",
    ])


def routing(root):
    out = ["## Routing one request on a node\n"]
    out.append(
        "`Ownership::route` (node/src/ownership.rs): actor id -> local, forward, redirect or unavailable, "
        "read under the node's one lock without copying or allocating, while a rebalance is pending (a "
        "third of the shards moving, 8 buckets, 3 members). Before: the node cloned its whole routing "
        "view (plan message, route table, pending moves) for every request, then looked up; that clone is "
        "measured here as `clone per request`. Baseline: the bare route-table lookup. Per request.\n"
    )
    out.append("| shards | route (now) | clone per request (before) | bare table | now / bare | before / now |")
    out.append("|---|---|---|---|---|---|")
    for shards in (1024, 65536):
        g = f"route_{shards}"
        now = median_ns(root, g, "ownership")
        before = median_ns(root, g, "clone_per_request")
        bare = median_ns(root, g, "bare_table")
        out.append(
            f"| {shards:,} | {now:.1f} ns | {fmt_ns(before)} | {bare:.1f} ns | {now / bare:.2f}x | {before / now:,.0f}x |"
        )
    return "\n".join(out) + "\n"


def app_section(path):
    try:
        with open(path) as f:
            r = json.load(f)
    except FileNotFoundError:
        return "## Application kinds\n\nNot run (target/app-bench.json missing).\n"
    base = r["builtin_counter"]
    runs = r["runs_ops_per_s"]
    out = [
        "## Application kinds: the app container and a Rust kind in process vs the built-in kind\n",
        f"{r['commands']} commands per run, {r['in_flight']} in flight, one client, a node per app, the apps and "
        f"nats-server on the same 2 cores; {r['rounds']} runs of each path interleaved after a round of each not counted (warm-up), the median run shown. "
        "Each command appends one record. `python app`: the bank example on the Python SDK "
        "(`examples/bank/app.py`, ThreadingHTTPServer, standard library) decides over loopback HTTP, the "
        "decide calls waiting at one moment sent in one `POST /v1/decide-batch` (the SDK offers "
        "`decideBatch` 64); `rust in process`: the same "
        "account logic as a `Behaviour` registered in the node; baseline: the built-in `counter`. "
        "`typescript app`: its twin on the TypeScript SDK (`examples/bank-ts/app.ts`, compiled by tsc, node:http, "
        "batches of 64 too); `stdlib app`: a hand-written standard-library Python app "
        "(`tests/apps/faulty.py`, one decide call per request, as an app without an SDK speaks the "
        "protocol); each app behind a node of its own. "
        "`app call alone`: the node's app client calling the Python app's decide one call per request "
        "(no batches), no node, no NATS. "
        "Goals: python app >= 0.5x, typescript app >= 0.6x, rust in process >= 0.9x the built-in "
        "throughput.\n",
        "| path | ops/s | p50 | p99 | throughput / built-in | goal | ops/s of each run |",
        "|---|---|---|---|---|---|---|",
    ]
    rows = [
        ("built-in counter", "builtin_counter", None),
        ("rust in process", "rust_in_process", 0.9),
        ("python app", "python_app", 0.5),
        ("typescript app", "typescript_app", 0.6),
        ("stdlib app", "stdlib_app", None),
        ("app call alone", "app_call", None),
    ]
    for name, key, goal in rows:
        if key not in r:
            continue
        f = r[key]
        ratio = f["ops_per_s"] / base["ops_per_s"]
        g = f">= {goal}x: {verdict(ratio >= goal)}" if goal else ""
        each = ", ".join(f"{x:.0f}" for x in runs[key])
        out.append(
            f"| {name} | {f['ops_per_s']:.0f} | {f['p50_us'] / 1000:.2f} ms | {f['p99_us'] / 1000:.2f} ms "
            f"| {ratio:.2f}x | {g} | {each} |"
        )
    out.append(
        "\nThe app paths vary from run to run on these shared cores more than the goals' margins: "
        "in five runs of this bench on 2026-12-05 (the batch's requests in flight at 2, 3 and 4 "
        "tried), the python app measured 0.46-0.62x and the typescript app 0.45-0.63x the built-in "
        "path; 2 in flight is kept (the Python app, one interpreter lock, loses with more). The "
        "recorded run (the TypeScript SDK compiled from its TypeScript sources, on an Intel Xeon "
        "where the five before ran on an AMD EPYC) is the sixth."
    )
    if "bank_lines" in r:
        bl = r["bank_lines"]
        out.append(
            f"\nThe bank app's lines: {bl['python_sdk']} on the Python SDK (`examples/bank/app.py`), "
            f"{bl['typescript_sdk']} on the TypeScript SDK (`examples/bank-ts/app.ts`); hand-written "
            "against the protocol with the standard library it was 197 (`examples/bank/app.py` at "
            "21161d5, the same kind with its holds and timers)."
        )
    py, call = r["python_app"]["ops_per_s"], r["app_call"]["ops_per_s"]
    if py / base["ops_per_s"] >= 0.5:
        out.append(
            f"\nThe python app path reaches {py / call:.2f}x the app's own speed one call at a time "
            f"({call:.0f} decide calls/s): batches take the per-request cost of the Python HTTP server "
            "(parsing, a thread's turn, the interpreter's lock) once for all the calls waiting, where "
            "one call per request made that cost the ceiling (0.32x the built-in path before batches).\n"
        )
    else:
        out.append(
            f"\nThe python app path misses its goal by {0.5 - py / base['ops_per_s']:.2f}x of the built-in "
            f"throughput: the Python app itself answers at most {call:.0f} decide calls/s here "
            f"({call / base['ops_per_s']:.2f}x the built-in path) on the cores it shares with the node and "
            f"nats-server, and the node's path through it reaches {py / call:.2f}x of that. The hop is "
            "the app's own speed (one interpreter, its lock), not the protocol: an app in a compiled "
            "language, or several app processes behind the URL, lifts the ceiling.\n"
        )
    return "\n".join(out) + "\n"


def fmt_ns(ns):
    return f"{ns / 1000:.1f} us" if ns >= 1000 else f"{ns:.1f} ns"


def main():
    root, balance, output = sys.argv[1:4]
    nats = sys.argv[4] if len(sys.argv) > 4 else None
    app = sys.argv[5] if len(sys.argv) > 5 else None
    doc = [
        "# Benchmarks\n",
        "Written by `make bench` (scripts/bench-report.py) from one run; each figure is measured beside its "
        "baseline in that run. Absolute numbers move with the machine, ratios much less.\n",
        "## Machine\n",
        machine(),
        "Command: `make bench` (criterion, release profile, `cargo bench -p aether-core --bench placement`, "
        "`cargo run --release -p aether-core --example balance_report`, `cargo bench -p aether-node --bench "
        "routing`, then `cargo bench -p aether-tests --bench nats` and `--bench app` against a nats-server it "
        "starts on loopback).\n",
        placement(root, balance),
        routing(root),
        nats_sections(nats) if nats else "",
        app_section(app) if app else "",
    ]
    # Every marked section (`<!-- name:begin -->` to `<!-- name:end -->`: the Peers section of
    # `make bench-peers`, the rolling update of the end-to-end test, and each bench that writes its
    # own, e.g. recovery, timers, hot, scale) comes from another run: kept, in its order.
    try:
        with open(output) as f:
            old = f.read()
        for m in re.finditer(r"<!-- ([\w-]+):begin -->.*?<!-- \1:end -->", old, re.S):
            doc.append(m.group(0) + "\n")
    except FileNotFoundError:
        pass
    with open(output, "w") as f:
        f.write("\n".join(doc))


if __name__ == "__main__":
    main()
