"""A kind of actor as plain functions: decide (command -> decision) and apply (event -> state).

The sidecar owns each actor's state, log, routing and moves; a kind only decides. A decision is
checked here against the limits of docs/PROTOCOL.md before it leaves the app, so a mistake is an
error that names the kind and the field, not an `appError` the caller sees later.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

JSON = Any

# Limits of docs/PROTOCOL.md ("App protocol", "Timers", "Limits").
MAX_EVENTS = 1024
MAX_SENDS = 64
MAX_TIMERS = 64
MAX_DEPTH = 32
KIND_NAME = re.compile(r"^[a-z0-9-]{1,32}$")
TIMER_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


class Rejected(Exception):
    """Raise from decide to refuse a command: the caller gets `rejected` with this reason."""


class InvalidDecision(ValueError):
    """A decision the sidecar would refuse; the message names the kind and the field."""


@dataclass
class Send:
    """A command to another actor, delivered once the decision's record is stored, exactly once in
    effect; its answer comes back to the sender as a `$reply` (see `Kind.on_reply`)."""

    kind: str
    id: str
    command: JSON

    def wire(self) -> dict:
        return {"actor": {"kind": self.kind, "id": self.id}, "command": self.command}


@dataclass
class Timer:
    """A command the actor schedules to itself: `after` a delay or `at` a time, optionally `every`
    period (durations as milliseconds or text such as "15m"; times as epoch milliseconds or RFC 3339)."""

    name: str
    command: JSON = None
    after: Optional[Any] = None
    at: Optional[Any] = None
    every: Optional[Any] = None
    catch_up: Optional[int] = None

    def wire(self) -> dict:
        out: dict = {"name": self.name, "command": self.command}
        for key, value in (("after", self.after), ("at", self.at), ("every", self.every)):
            if value is not None:
                out[key] = value
        if self.catch_up is not None:
            out["catchUp"] = self.catch_up
        return out


@dataclass
class Decision:
    """What a command does: the events to append (the state follows by `apply`), what the caller
    gets back (`reply`; without one, the kind's `reply` function of the new state, if it has one),
    commands to other actors, and timers to set or cancel."""

    events: list = field(default_factory=list)
    reply: JSON = None
    send: list = field(default_factory=list)
    timers: list = field(default_factory=list)
    cancel: list = field(default_factory=list)


@dataclass
class Context:
    """Where a decide call comes from."""

    kind: str
    id: str
    version: int
    command_id: Optional[str]


@dataclass
class SendReply:
    """The receiver's answer to one of this actor's sends (the `$reply` command)."""

    id: str
    to_kind: str
    to_id: str
    command: JSON
    ok: Optional[dict]
    error: Optional[dict]


@dataclass
class Firing:
    """A timer of this actor came due (the `$timer` command): use `due`, not the app's clock."""

    name: str
    due: int
    missed: int
    command: JSON


Decide = Callable[[JSON, JSON, Context], Optional[Decision]]
Apply = Callable[[JSON, JSON], JSON]


class Kind:
    """A kind of actor. Register its functions with the decorators:

        account = Kind("account", initial={"balance": 0})

        @account.apply
        def apply(state, event): ...

        @account.decide
        def decide(state, command, ctx): return Decision(events=[...])
    """

    def __init__(self, name: str, initial: JSON = None, snapshot_every: int = 32):
        if not KIND_NAME.match(name):
            raise ValueError(f"kind name {name!r}: [a-z0-9-]{{1,32}}")
        if not 1 <= snapshot_every <= 1024:
            raise ValueError(f"kind {name}: snapshot_every is 1 to 1024")
        self.name = name
        self.initial = initial
        self.snapshot_every = snapshot_every
        self._decide: Optional[Decide] = None
        self._apply: Optional[Apply] = None
        self._reply: Optional[Callable[[JSON], JSON]] = None
        self._on_reply: Optional[Callable[[JSON, SendReply, Context], Optional[Decision]]] = None
        self._on_timer: Optional[Callable[[JSON, Firing, Context], Optional[Decision]]] = None

    # Registration.
    def decide(self, f: Decide) -> Decide:
        self._decide = f
        return f

    def apply(self, f: Apply) -> Apply:
        self._apply = f
        return f

    def reply(self, f: Callable[[JSON], JSON]) -> Callable[[JSON], JSON]:
        """What the caller gets back when a decision names no reply: a function of the new state."""
        self._reply = f
        return f

    def on_reply(self, f):
        """Handles the answer to one of this actor's sends (default: nothing recorded)."""
        self._on_reply = f
        return f

    def on_timer(self, f):
        """Handles a timer's firing (default: nothing recorded)."""
        self._on_timer = f
        return f

    def info(self) -> dict:
        return {"name": self.name, "snapshotEvery": self.snapshot_every, "initial": self.initial}

    # The protocol's two calls, as plain functions.
    def fold(self, state: JSON, events: list) -> JSON:
        if self._apply is None:
            if events:
                raise InvalidDecision(f"kind {self.name}: events but no apply function")
            return state
        for e in events:
            state = self._apply(state, e)
        return state

    def run_decide(self, state: JSON, command: JSON, ctx: Context) -> dict:
        """The answer to a decide call: `{"rejected": why}` or the checked decision with its state."""
        if state is None:
            state = self.initial
        try:
            decision = self._dispatch(state, command, ctx)
        except Rejected as why:
            return {"rejected": str(why)[:1024]}
        if decision is None:
            decision = Decision()
        if not isinstance(decision, Decision):
            raise InvalidDecision(f"kind {self.name}: decide returned {type(decision).__name__}, not a Decision")
        return self.answer(state, decision)

    def answer(self, state: JSON, d: Decision) -> dict:
        """The wire answer of decision `d` taken on `state`, checked."""
        where = f"kind {self.name}"
        if not isinstance(d.events, list):
            raise InvalidDecision(f"{where}: events must be a list")
        if len(d.events) > MAX_EVENTS:
            raise InvalidDecision(f"{where}: {len(d.events)} events, at most {MAX_EVENTS}")
        for i, e in enumerate(d.events):
            check_depth(e, f"{where}: events[{i}]")
        if len(d.send) > MAX_SENDS:
            raise InvalidDecision(f"{where}: {len(d.send)} sends, at most {MAX_SENDS}")
        sends = []
        for i, s in enumerate(d.send):
            if not isinstance(s, Send):
                raise InvalidDecision(f"{where}: send[{i}] is a {type(s).__name__}, not a Send")
            if not KIND_NAME.match(s.kind) and s.kind not in ("counter", "doc", "list"):
                raise InvalidDecision(f"{where}: send[{i}].kind {s.kind!r} is no kind name")
            if not isinstance(s.id, str):
                raise InvalidDecision(f"{where}: send[{i}].id must be a string")
            if isinstance(s.command, dict) and any(str(k).startswith("$") for k in s.command):
                raise InvalidDecision(f"{where}: send[{i}].command has a key starting with $ (the nodes' own)")
            check_depth(s.command, f"{where}: send[{i}].command")
            sends.append(s.wire())
        if len(d.timers) > MAX_TIMERS or len(d.cancel) > MAX_TIMERS:
            raise InvalidDecision(f"{where}: at most {MAX_TIMERS} timers and {MAX_TIMERS} cancels per decision")
        timers = []
        for i, t in enumerate(d.timers):
            if not isinstance(t, Timer):
                raise InvalidDecision(f"{where}: timers[{i}] is a {type(t).__name__}, not a Timer")
            if not TIMER_NAME.match(t.name):
                raise InvalidDecision(f"{where}: timers[{i}].name {t.name!r}: [A-Za-z0-9_.:-]{{1,64}}")
            if t.after is not None and t.at is not None:
                raise InvalidDecision(f"{where}: timers[{i}] has both after and at")
            if t.after is None and t.at is None and t.every is None:
                raise InvalidDecision(f"{where}: timers[{i}] needs after, at or every")
            timers.append(t.wire())
        for i, name in enumerate(d.cancel):
            if not isinstance(name, str) or not TIMER_NAME.match(name):
                raise InvalidDecision(f"{where}: cancel[{i}] {name!r} is no timer name")
        new = self.fold(state, d.events)
        check_depth(new, f"{where}: state")
        out: dict = {"events": d.events, "state": new}
        reply = d.reply if d.reply is not None else (self._reply(new) if self._reply else None)
        if reply is not None:
            check_depth(reply, f"{where}: reply")
            out["reply"] = reply
        if sends:
            out["send"] = sends
        if timers:
            out["timers"] = timers
        if d.cancel:
            out["cancel"] = list(d.cancel)
        return out

    def _dispatch(self, state: JSON, command: JSON, ctx: Context) -> Optional[Decision]:
        if isinstance(command, dict) and "$reply" in command:
            if self._on_reply is None:
                return None
            r = command["$reply"]
            outcome = r.get("outcome", {})
            to = r.get("to", {})
            reply = SendReply(r.get("id", ""), to.get("kind", ""), to.get("id", ""), r.get("command"),
                              outcome.get("ok"), outcome.get("error"))
            return self._on_reply(state, reply, ctx)
        if isinstance(command, dict) and "$timer" in command:
            if self._on_timer is None:
                return None
            t = command["$timer"]
            firing = Firing(t.get("name", ""), t.get("due", 0), t.get("missed", 0), t.get("command"))
            return self._on_timer(state, firing, ctx)
        if self._decide is None:
            raise Rejected(f"kind {self.name} takes no commands")
        return self._decide(state, command, ctx)


def check_depth(value: JSON, where: str, depth: int = 1) -> None:
    """Values nest at most 32 levels deep (arrays and objects), as the sidecar requires."""
    if isinstance(value, (list, dict)):
        if depth > MAX_DEPTH:
            raise InvalidDecision(f"{where} nests deeper than {MAX_DEPTH} levels")
        items = value.values() if isinstance(value, dict) else value
        for v in items:
            check_depth(v, where, depth + 1)
