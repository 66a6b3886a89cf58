"""The app protocol, served: `GET /v1/kinds`, `POST /v1/decide`, `POST /v1/decide-batch`,
`POST /v1/apply` (docs/PROTOCOL.md, "App protocol") over kept-alive HTTP/1.1 on loopback, for the
kinds given. Standard library only."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterable, Optional

from .kind import Context, InvalidDecision, Kind


#: Decide calls the SDK offers to take in one `POST /v1/decide-batch` (`decideBatch`).
DECIDE_BATCH = 64


class App:
    """The kinds of one app container. `serve` blocks; `start` serves on a thread (for tests).
    `decide_batch`: the most decide calls the sidecar may send in one request (1: one per request)."""

    def __init__(self, kinds: Iterable[Kind], decide_batch: int = DECIDE_BATCH):
        self.kinds = {}
        for k in kinds:
            if k.name in self.kinds:
                raise ValueError(f"kind {k.name} given twice")
            self.kinds[k.name] = k
        if not 1 <= decide_batch <= 1024:
            raise ValueError(f"decide_batch {decide_batch} is outside 1..1024")
        info = {"kinds": [k.info() for k in self.kinds.values()]}
        if decide_batch > 1:
            info["decideBatch"] = decide_batch
        self._kinds_body = json.dumps(info).encode()
        self._server: Optional[ThreadingHTTPServer] = None

    # The calls, without HTTP (what the handler runs).
    def decide(self, call: dict) -> dict:
        kind = self._kind(call.get("kind"))
        ctx = Context(kind.name, call.get("id", ""), call.get("version", 0), call.get("commandId"))
        return kind.run_decide(call.get("state"), call.get("command"), ctx)

    def decide_batch(self, batch: dict) -> dict:
        """Each call's answer, in order; a call the app's code fails on answers `{"error": why}`
        alone, the others are answered."""
        answers = []
        for call in batch.get("calls") or []:
            try:
                answers.append(self.decide(call))
            except Exception as e:  # noqa: BLE001 (that call's failure only)
                why = f"{type(e).__name__}: {e}"
                print(f"aether app: {why}", file=sys.stderr, flush=True)
                answers.append({"error": why})
        return {"answers": answers}

    def apply(self, call: dict) -> dict:
        kind = self._kind(call.get("kind"))
        state = call.get("state")
        if state is None:
            state = kind.initial
        return {"state": kind.fold(state, call.get("events") or [])}

    def _kind(self, name) -> Kind:
        kind = self.kinds.get(name)
        if kind is None:
            raise InvalidDecision(f"no kind {name!r} here (this app hosts {', '.join(self.kinds)})")
        return kind

    # HTTP.
    def server(self, host: str = "127.0.0.1", port: int = 8000) -> ThreadingHTTPServer:
        app = self

        class Handler(_Handler):
            pass

        Handler.app = app
        server = ThreadingHTTPServer((host, port), Handler)
        server.daemon_threads = True
        return server

    def serve(self, host: str = "127.0.0.1", port: int = 8000) -> None:
        """Serves until SIGTERM or SIGINT, then returns; the sidecar gets `--app-url
        http://{host}:{port}`. The handlers matter in a container: there the app is process 1, and
        the kernel ignores a signal process 1 has no handler for, so without them a pod's deletion
        would wait out its whole grace period before the kubelet kills the app."""
        server = self.server(host, port)
        if threading.current_thread() is threading.main_thread():
            def stop(signum, _frame):
                # shutdown() waits for serve_forever to return: from another thread.
                threading.Thread(target=server.shutdown, daemon=True).start()

            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, stop)
        print(f"aether app ({', '.join(self.kinds)}) on http://{host}:{server.server_port}",
              file=sys.stderr, flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            server.server_close()

    def main(self, description: str = "an aether app", argv: Optional[list] = None) -> None:
        """Serves with the command line an app container takes: `--listen host:port`, or `--host`
        and `--port` (env `AETHER_APP_HOST`, `AETHER_APP_PORT`; default 127.0.0.1:8000)."""
        p = argparse.ArgumentParser(description=description)
        p.add_argument("--port", type=int, default=int(os.environ.get("AETHER_APP_PORT", "8000")))
        p.add_argument("--host", default=os.environ.get("AETHER_APP_HOST", "127.0.0.1"))
        p.add_argument("--listen", help="host:port, in place of --host and --port")
        args = p.parse_args(argv)
        if args.listen:
            args.host, _, port = args.listen.rpartition(":")
            args.port = int(port)
        self.serve(args.host, args.port)

    def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serves on a daemon thread; returns its URL."""
        self._server = self.server(host, port)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return f"http://{host}:{self._server.server_port}"

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


class _Handler(BaseHTTPRequestHandler):
    app: App
    protocol_version = "HTTP/1.1"  # kept-alive connections
    # One segment per answer: headers and body buffered together, no Nagle delay (else each call
    # waits for a delayed ACK).
    wbufsize = 1 << 16
    disable_nagle_algorithm = True

    def _answer(self, status: int, data: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):  # noqa: N802 (the http.server API)
        if self.path == "/v1/kinds":
            self._answer(200, self.app._kinds_body)
        else:
            self._answer(404, json.dumps({"error": f"no {self.path}"}).encode())

    def do_POST(self):  # noqa: N802
        length = int(self.headers.get("Content-Length", "0"))
        try:
            call = json.loads(self.rfile.read(length) or b"{}")
            if self.path == "/v1/decide":
                body = self.app.decide(call)
            elif self.path == "/v1/decide-batch":
                body = self.app.decide_batch(call)
            elif self.path == "/v1/apply":
                body = self.app.apply(call)
            else:
                self._answer(404, json.dumps({"error": f"no {self.path}"}).encode())
                return
            self._answer(200, json.dumps(body, separators=(",", ":")).encode())
        except Exception as e:  # noqa: BLE001 (any failure of the app's code is answered)
            # The app's own mistake: the sidecar answers the caller `appError` and counts it.
            why = f"{type(e).__name__}: {e}"
            print(f"aether app: {why}", file=sys.stderr, flush=True)
            self._answer(500, json.dumps({"error": why}).encode())

    def log_message(self, *args):
        pass
