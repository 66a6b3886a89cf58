"""A client of the app API (docs/PROTOCOL.md, "App API"): the app's own calls to actors, through its
sidecar on loopback. Every error answer becomes an `AetherError` with the protocol's code."""

from __future__ import annotations

import asyncio
import http.client
import json
import threading
import urllib.parse
from dataclasses import dataclass
from typing import Any, Optional


@dataclass
class Reply:
    """An actor's answer: its version (records so far), state, the node that answered and, for an
    app kind, what its decide replied."""

    version: int
    state: Any
    node: str
    reply: Any
    timers: list
    command_id: Optional[str]


class AetherError(Exception):
    """An error answer: `code` (`rejected`, `unavailable`, `malformed`, ...), its message, the
    `retry_after_ms` to wait before a retry when the code says to, and the command id used (retry a
    command whose outcome is unknown, a 503, with that id: it is applied at most once)."""

    def __init__(self, code: str, message: str, status: int, retry_after_ms: Optional[int] = None,
                 command_id: Optional[str] = None):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status
        self.retry_after_ms = retry_after_ms
        self.command_id = command_id


class Client:
    """Calls actors through the sidecar's app API (default `http://127.0.0.1:3500`). Thread-safe:
    one kept-alive connection per thread."""

    def __init__(self, url: str = "http://127.0.0.1:3500", timeout: float = 15.0):
        u = urllib.parse.urlsplit(url)
        if u.scheme != "http" or not u.hostname:
            raise ValueError(f"app API URL {url!r}: http://host:port")
        self.host, self.port, self.timeout = u.hostname, u.port or 80, timeout
        self._local = threading.local()

    def actor(self, kind: str, id: str) -> "Actor":
        return Actor(self, kind, id)

    def request(self, method: str, path: str, body: Optional[bytes] = None,
                headers: Optional[dict] = None, retry_safe: bool = True) -> tuple[int, dict, bytes]:
        """One HTTP exchange on this thread's kept-alive connection. A connection the sidecar closed
        while idle (it closes them after 10 s) fails on reuse: the request is sent once more on a
        new one when that cannot apply it twice (`retry_safe`: a read, or a command with an id)."""
        while True:
            conn = getattr(self._local, "conn", None)
            reused = conn is not None
            if conn is None:
                conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
                self._local.conn = conn
            try:
                conn.request(method, path, body=body, headers=headers or {})
                r = conn.getresponse()
                return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
            except (ConnectionError, http.client.HTTPException):
                conn.close()
                self._local.conn = None
                if not (reused and retry_safe):
                    raise


class Actor:
    """One actor, by kind and id."""

    def __init__(self, client: Client, kind: str, id: str):
        self.client, self.kind, self.id = client, kind, id
        self.path = f"/v1/actors/{urllib.parse.quote(kind, safe='')}/{urllib.parse.quote(id, safe='')}"

    def call(self, command: Any, command_id: Optional[str] = None) -> Reply:
        """Sends a command; with `command_id`, a retry with the same id is applied at most once."""
        headers = {"Content-Type": "application/json"}
        if command_id is not None:
            headers["Aether-Command-Id"] = command_id
        status, head, body = self.client.request("POST", self.path, json.dumps(command).encode(), headers,
                                                 retry_safe=command_id is not None)
        return _reply(status, head, body)

    def get(self) -> Reply:
        """Reads the actor."""
        return _reply(*self.client.request("GET", self.path))

    def timers(self) -> list:
        """The actor's timers."""
        status, head, body = self.client.request("GET", self.path + "/timers")
        if status != 200:
            _reply(status, head, body)
        return json.loads(body)["timers"]


def _reply(status: int, head: dict, body: bytes) -> Reply:
    command_id = head.get("aether-command-id")
    try:
        data = json.loads(body)
    except ValueError:
        raise AetherError("internal", f"not JSON (HTTP {status}): {body[:200]!r}", status, None, command_id)
    if status == 200:
        return Reply(data.get("version", 0), data.get("state"), data.get("node", ""), data.get("reply"),
                     data.get("timers", []), command_id)
    raise AetherError(data.get("code", "internal"), data.get("message", ""), status, data.get("retryAfterMs"),
                      command_id)


class AsyncClient:
    """The same calls for asyncio code: each runs on a worker thread, off the event loop."""

    def __init__(self, url: str = "http://127.0.0.1:3500", timeout: float = 15.0):
        self._sync = Client(url, timeout)

    def actor(self, kind: str, id: str) -> "AsyncActor":
        return AsyncActor(self._sync.actor(kind, id))


class AsyncActor:
    def __init__(self, actor: Actor):
        self._actor = actor

    async def call(self, command: Any, command_id: Optional[str] = None) -> Reply:
        return await asyncio.to_thread(self._actor.call, command, command_id)

    async def get(self) -> Reply:
        return await asyncio.to_thread(self._actor.get)

    async def timers(self) -> list:
        return await asyncio.to_thread(self._actor.timers)
