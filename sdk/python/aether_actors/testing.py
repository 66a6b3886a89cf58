"""Actors in memory, for unit tests: no sidecar, no NATS. `Harness` keeps each actor's events and
state as the sidecar would (a command decided, its events applied and recorded), delivers sends
between actors one at a time in the order each sender recorded them, brings each answer back as a
`$reply`, fires timers when the test moves its clock, and checks that replaying an actor's events
from its initial state gives the state it holds."""

from __future__ import annotations

import copy
import hashlib
import json
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional

from .kind import Context, InvalidDecision, Kind


@dataclass
class Actor:
    kind: str
    id: str
    state: Any
    events: list = field(default_factory=list)
    version: int = 0
    timers: dict = field(default_factory=dict)
    seen: dict = field(default_factory=dict)  # command id -> answer (a retry gets the first answer)


class Harness:
    """Runs kinds in memory. `call` decides a command; `run` delivers every pending send (and its
    `$reply`) until none is left; `advance` moves the clock and fires what is due."""

    def __init__(self, kinds: Iterable[Kind], now_ms: int = 1_800_000_000_000):
        self.kinds = {k.name: k for k in kinds}
        self.actors: dict[tuple[str, str], Actor] = {}
        self.now_ms = now_ms
        self.outbox: deque = deque()  # (sender, send id, kind, id, command)
        self.log: list = []  # every decision: (kind, id, command, answer)

    def actor(self, kind: str, id: str) -> Actor:
        key = (kind, id)
        if key not in self.actors:
            k = self._kind(kind)
            self.actors[key] = Actor(kind, id, copy.deepcopy(k.initial))
        return self.actors[key]

    def state(self, kind: str, id: str) -> Any:
        return self.actor(kind, id).state

    def call(self, kind: str, id: str, command: Any, command_id: Optional[str] = None) -> dict:
        """Decides `command` at the actor: the answer as the sidecar would give it (`{"rejected":
        why}`, or `{"version", "state", "reply"}`). A repeated `command_id` gets the first answer."""
        a = self.actor(kind, id)
        if command_id is not None and command_id in a.seen:
            return a.seen[command_id]
        k = self._kind(kind)
        ctx = Context(kind, id, a.version, command_id)
        answer = k.run_decide(copy.deepcopy(a.state), copy.deepcopy(command), ctx)
        self.log.append((kind, id, command, answer))
        if "rejected" in answer:
            result = {"rejected": answer["rejected"]}
        else:
            record = bool(answer["events"] or answer.get("send") or answer.get("timers") or answer.get("cancel"))
            if record:
                a.version += 1
                a.events.extend(answer["events"])
                a.state = answer["state"]
                for i, s in enumerate(answer.get("send", [])):
                    sid = f"$send-{_h(kind, id)}-{a.version}-{i}"
                    self.outbox.append(((kind, id), sid, s["actor"]["kind"], s["actor"]["id"], s["command"]))
                for t in answer.get("timers", []):
                    a.timers[t["name"]] = self._resolve(t)
                for name in answer.get("cancel", []):
                    a.timers.pop(name, None)
            result = {"version": a.version, "state": a.state, "reply": answer.get("reply")}
        if command_id is not None:
            a.seen[command_id] = result
        return result

    def run(self, limit: int = 100_000) -> int:
        """Delivers pending sends, oldest first, each with its answer back to its sender as a
        `$reply`, until none is left; returns how many were delivered."""
        n = 0
        while self.outbox:
            n += 1
            if n > limit:
                raise AssertionError(f"more than {limit} sends: do the actors send to each other forever?")
            (skind, sid_actor), sid, kind, id, command = self.outbox.popleft()
            if kind in self.kinds:
                got = self.call(kind, id, command, command_id=sid)
                outcome = ({"error": {"code": "rejected", "message": got["rejected"]}} if "rejected" in got
                           else {"ok": {"version": got["version"], "state": got["state"], "node": "harness",
                                        **({"reply": got["reply"]} if got.get("reply") is not None else {})}})
            else:
                outcome = {"error": {"code": "unknownKind", "message": f"no actor kind {kind!r}"}}
            reply = {"$reply": {"id": sid, "to": {"kind": kind, "id": id}, "command": command, "outcome": outcome}}
            self.call(skind, sid_actor, reply, command_id=sid.replace("$send-", "$reply-", 1))
        return n

    def advance(self, ms: int) -> int:
        """Moves the clock `ms` on and fires every timer due (in due order, periodic ones once per
        call with `missed` counting skipped ticks), delivering the sends they cause; returns how
        many fired."""
        self.now_ms += ms
        fired = 0
        while True:
            due = [(t["due"], a, t) for a in self.actors.values() for t in a.timers.values()
                   if t["due"] <= self.now_ms]
            if not due:
                return fired
            due.sort(key=lambda x: (x[0], x[1].kind, x[1].id, x[2]["name"]))
            when, a, t = due[0]
            missed = 0
            if t.get("every"):
                ticks = (self.now_ms - when) // t["every"]
                missed, when = ticks, when + ticks * t["every"]
                t["due"] = when + t["every"]
            else:
                del a.timers[t["name"]]
            cmd = {"$timer": {"name": t["name"], "due": when, "missed": missed, "command": t.get("command")}}
            self.call(a.kind, a.id, cmd, command_id=f"$timer-{_h(a.kind, a.id)}-{when}-{t['name']}")
            fired += 1
            self.run()

    def check_replay(self) -> None:
        """Every actor's events, applied from its kind's initial state, give the state it holds."""
        for a in self.actors.values():
            k = self._kind(a.kind)
            again = k.fold(copy.deepcopy(k.initial), copy.deepcopy(a.events))
            if json.dumps(again, sort_keys=True) != json.dumps(a.state, sort_keys=True):
                raise AssertionError(f"{a.kind}/{a.id}: replaying its events gives {again!r}, it holds {a.state!r}")

    def _kind(self, name: str) -> Kind:
        k = self.kinds.get(name)
        if k is None:
            raise InvalidDecision(f"no kind {name!r} in the harness")
        return k

    def _resolve(self, t: dict) -> dict:
        every = _ms(t["every"]) if "every" in t else None
        if "at" in t:
            due = t["at"] if isinstance(t["at"], int) else self.now_ms
        elif "after" in t:
            due = self.now_ms + _ms(t["after"])
        else:
            due = self.now_ms + (every or 0)
        out = {"name": t["name"], "due": due, "command": t.get("command")}
        if every:
            out["every"] = every
        return out


_UNITS = {"ms": 1, "s": 1000, "sec": 1000, "m": 60_000, "min": 60_000, "h": 3_600_000, "d": 86_400_000,
          "day": 86_400_000, "days": 86_400_000}


def _ms(v: Any) -> int:
    """A duration: milliseconds, or text such as "15m", "1h 30m", "500ms"."""
    if isinstance(v, int):
        return v
    total = 0
    text = str(v).strip()
    i = 0
    while i < len(text):
        j = i
        while j < len(text) and (text[j].isdigit() or text[j] == "."):
            j += 1
        num = text[i:j]
        k = j
        while k < len(text) and text[k].isalpha():
            k += 1
        unit = text[j:k]
        if not num or unit not in _UNITS:
            raise ValueError(f"duration {v!r}")
        total += int(float(num) * _UNITS[unit])
        i = k
        while i < len(text) and text[i] == " ":
            i += 1
    return total


def _h(kind: str, id: str) -> str:
    """A stand-in for the sidecar's XXH3-64 of `kind/id` (ids only need to be unique here)."""
    return hashlib.blake2b(f"{kind}/{id}".encode(), digest_size=8).hexdigest()
