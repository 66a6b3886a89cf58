#!/usr/bin/env python3
"""The counter actor for aether as an app (docs/PROTOCOL.md, "App protocol"): the same logic as
Dapr's counter in dapr_counter.py and as aether's built-in `counter` kind, which it replaces
(`{"add": n}` adds n and replies the state; a read is served by the sidecar from the state it holds,
without calling the app). Pure functions over loopback HTTP; the sidecar owns the state and the log.
Python standard library only, written like examples/bank/app.py.

    aether_counter.py --port 7000
"""
import argparse
import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

KINDS = json.dumps({"kinds": [{"name": "counter", "snapshotEvery": 32, "initial": {"value": 0}}]}).encode()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # kept-alive connections
    # Headers and body in one segment, no Nagle delay (see examples/bank/app.py).
    wbufsize = 1 << 16
    disable_nagle_algorithm = True

    def log_message(self, *args):
        pass

    def answer(self, status, data):
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/v1/kinds":
            self.answer(200, KINDS)
        else:
            self.answer(404, b'{"error":"no such path"}')

    def do_POST(self):
        length = int(self.headers.get("Content-Length", "0"))
        call = json.loads(self.rfile.read(length) or b"{}")
        state = call.get("state") or {"value": 0}
        if self.path == "/v1/decide":
            command = call.get("command")
            n = command.get("add") if isinstance(command, dict) else None
            if not isinstance(n, int) or isinstance(n, bool):
                self.answer(200, json.dumps({"rejected": 'expected {"add": n}'}).encode())
                return
            state = {"value": state.get("value", 0) + n}
            self.answer(200, json.dumps({"events": [{"added": n}], "state": state, "reply": state}).encode())
        elif self.path == "/v1/apply":
            value = state.get("value", 0)
            for e in call.get("events", []):
                value += e.get("added", 0)
            self.answer(200, json.dumps({"state": {"value": value}}).encode())
        else:
            self.answer(404, b'{"error":"no such path"}')


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    args = p.parse_args()
    ThreadingHTTPServer.daemon_threads = True
    ThreadingHTTPServer(("127.0.0.1", args.port), Handler).serve_forever()


if __name__ == "__main__":
    main()
