#!/usr/bin/env python3
"""A test app that answers what its command asks for, to show how a sidecar treats each fault of
an app container (tests/tests/app_protocol.rs). Kind `faulty`, state {"n": int}:
  {"ok": true}          a good answer (one event)
  {"answer": "notJson"} a body that is not JSON
  {"answer": "eventsNotList"}, {"answer": "noState"}, {"answer": "status500"},
  {"answer": "bigState", "bytes": n}   a state of about n bytes
  {"answer": "slow", "ms": n}          answers after n ms
  {"answer": "bigReply", "bytes": n}   a good answer whose reply is n bytes
  {"answer": "reject"}                 a refusal
  {"answer": "timer", "timers": [...], "cancel": [...]}  a good answer that sets and cancels timers
  {"$timer": {...}}                    a firing: recorded in the state's "fired" list
Usage: faulty.py --port P
"""

import argparse
import json
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def st(n, fired):
    """The state: {"n": n}, with the firings seen once there are any."""
    return {"n": n, "fired": fired} if fired else {"n": n}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    wbufsize = 1 << 16
    disable_nagle_algorithm = True

    def raw(self, status, data):
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def answer(self, body, status=200):
        self.raw(status, json.dumps(body).encode())

    def do_GET(self):
        self.answer({"kinds": [{"name": "faulty", "snapshotEvery": 4, "initial": {"n": 0}}]})

    def do_POST(self):
        call = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
        state = call.get("state") or {"n": 0}
        if self.path == "/v1/apply":
            fired = state.get("fired", []) + [e["fired"] for e in call["events"] if "fired" in e]
            self.answer({"state": st(state["n"] + len(call["events"]), fired)})
            return
        cmd = call["command"]
        fired = state.get("fired", [])
        good = {"events": [{"inc": 1}], "state": st(state["n"] + 1, fired), "reply": {"n": state["n"] + 1}}
        if "$timer" in cmd:
            f = cmd["$timer"]
            event = {"fired": {k: f[k] for k in ("name", "due", "missed", "command")}}
            self.answer({"events": [event], "state": st(state["n"] + 1, fired + [event["fired"]])})
            return
        what = cmd.get("answer", "ok")
        if what == "timer":
            self.answer({**good, "timers": cmd.get("timers", []), "cancel": cmd.get("cancel", [])})
        elif what == "ok":
            self.answer(good)
        elif what == "notJson":
            self.raw(200, b"<html>oops</html>")
        elif what == "eventsNotList":
            self.answer({"events": {"inc": 1}, "state": {"n": 1}})
        elif what == "noState":
            self.answer({"events": [{"inc": 1}]})
        elif what == "status500":
            self.answer({"error": "boom"}, status=500)
        elif what == "bigState":
            self.answer({"events": [{"inc": 1}], "state": {"n": state["n"] + 1, "pad": "x" * cmd["bytes"]}})
        elif what == "bigReply":
            self.answer({**good, "reply": "r" * cmd["bytes"]})
        elif what == "slow":
            time.sleep(cmd["ms"] / 1000)
            self.answer(good)
        elif what == "reject":
            self.answer({"rejected": "refused as asked"})

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    a = p.parse_args()
    s = ThreadingHTTPServer(("127.0.0.1", a.port), Handler)
    s.daemon_threads = True
    s.serve_forever()
