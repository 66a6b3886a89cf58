#!/usr/bin/env python3
"""The SDK's client against a real sidecar (run by tests/tests/it/app_protocol.rs with a node whose
app is examples/bank/app.py): commands with ids and their retries, refusals and unknown kinds as
`AetherError`s with the protocol's codes, a transfer's send arriving, timers, the asyncio client.
Exits non-zero, saying what differs, on any mismatch."""

import argparse
import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aether_actors import AetherError, AsyncClient, Client  # noqa: E402


def expect_error(call, code, status):
    try:
        got = call()
    except AetherError as e:
        assert (e.code, e.status) == (code, status), f"expected {code}/{status}, got {e.code}/{e.status}: {e}"
        return e
    raise AssertionError(f"expected {code}, got an answer: {got}")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--api", required=True, help="the sidecar's app API, http://host:port")
    args = p.parse_args()
    client = Client(args.api)
    alice = client.actor("account", "sdk-alice")
    r = alice.call({"deposit": 100}, command_id="sdk-dep-1")
    assert (r.state, r.version, r.command_id) == ({"balance": 100}, 1, "sdk-dep-1"), r
    r = alice.call({"deposit": 100}, command_id="sdk-dep-1")
    assert (r.state, r.version) == ({"balance": 100}, 1), f"a retry is applied once: {r}"
    e = expect_error(lambda: alice.call({"withdraw": 500}), "rejected", 409)
    assert "insufficient funds" in e.message, e.message
    assert e.command_id, "every answer to a command says the command id used"
    r = alice.call({"transfer": {"to": "sdk-bob", "amount": 30}}, command_id="sdk-t-1")
    assert r.reply == {"balance": 70}, r
    bob = client.actor("account", "sdk-bob")
    deadline = time.monotonic() + 20
    while bob.get().state != {"balance": 30}:
        assert time.monotonic() < deadline, f"the transfer's deposit never arrived: {bob.get()}"
        time.sleep(0.05)
    expect_error(lambda: client.actor("nope", "x").get(), "unknownKind", 404)
    alice.call({"hold": {"id": "h1", "amount": 5, "ttl": "1h"}}, command_id="sdk-h-1")
    timers = alice.timers()
    assert [t["name"] for t in timers] == ["hold-h1"], timers
    got = asyncio.run(AsyncClient(args.api).actor("account", "sdk-alice").get())
    assert got.state == {"balance": 65, "holds": {"h1": 5}}, got
    print("sdk client: ok")


if __name__ == "__main__":
    main()
