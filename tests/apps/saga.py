#!/usr/bin/env python3
"""A saga app for the exactly-once tests (tests/tests/exactly_once.rs), written from
docs/PROTOCOL.md: an `order` reserves stock by a send and records the answer it gets back.

Kinds:
  stock  {"reserve": {"order": id, "qty": n}} -> event {"reserved": {"order", "qty"}}; the state
         counts reservations per order, so a send applied twice shows as a count of 2.
  order  {"place": {"stock": id, "qty": n}} -> event {"placed": ...}, send reserve to the stock;
         its $reply -> event {"confirmed": bool}.
With --hold FILE, a $reply decide call waits while FILE exists (the test kills the sender's node
meanwhile: the receiver has applied the send, the sender has not recorded the answer).
Usage: saga.py --port P [--hold FILE]
"""

import argparse
import json
import os
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HOLD = None

KINDS = {
    "kinds": [
        {"name": "stock", "snapshotEvery": 4, "initial": {"orders": {}}},
        {"name": "order", "snapshotEvery": 4, "initial": {"status": "new"}},
    ]
}


def fold(kind, state, event):
    state = json.loads(json.dumps(state))
    if kind == "stock" and "reserved" in event:
        o = event["reserved"]["order"]
        state["orders"][o] = state["orders"].get(o, 0) + 1
    elif kind == "order" and "placed" in event:
        state["status"] = "placed"
    elif kind == "order" and "confirmed" in event:
        state["status"] = "confirmed" if event["confirmed"] else "failed"
    return state


def decide(call):
    kind, state, cmd = call["kind"], call["state"], call["command"]
    if kind == "stock" and "reserve" in cmd:
        ev = {"reserved": cmd["reserve"]}
        return {"events": [ev], "state": fold(kind, state, ev), "reply": {"ok": True}}
    if kind == "order" and "place" in cmd:
        ev = {"placed": cmd["place"]}
        send = {
            "actor": {"kind": "stock", "id": cmd["place"]["stock"]},
            "command": {"reserve": {"order": call["id"], "qty": cmd["place"]["qty"]}},
        }
        return {"events": [ev], "state": fold(kind, state, ev), "send": [send]}
    if kind == "order" and "$reply" in cmd:
        while HOLD and os.path.exists(HOLD):
            time.sleep(0.02)
        ok = "ok" in cmd["$reply"]["outcome"]
        ev = {"confirmed": ok}
        return {"events": [ev], "state": fold(kind, state, ev)}
    return {"rejected": "unknown command"}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def answer(self, body):
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self.answer(KINDS)

    def do_POST(self):
        call = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
        if self.path == "/v1/apply":
            state = call["state"]
            for e in call["events"]:
                state = fold(call["kind"], state, e)
            self.answer({"state": state})
        else:
            self.answer(decide(call))

    def log_message(self, *args):
        pass


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        # The sidecar gave up on a held decide (its app timeout) and closed the connection: expected.
        if isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            return
        super().handle_error(request, client_address)


def main():
    global HOLD
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--hold")
    a = p.parse_args()
    HOLD = a.hold
    Server(("127.0.0.1", a.port), Handler).serve_forever()


if __name__ == "__main__":
    main()
