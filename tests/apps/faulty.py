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
With --batch N it offers `decideBatch` N: in a batch, a call that would answer another status is
answered {"error": ...} alone, and {"answer": "batchShort"} makes the whole batch one answer short.
Usage: faulty.py --port P [--batch N]
"""

import argparse
import json
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def st(n, fired):
    """The state: {"n": n}, with the firings seen once there are any."""
    return {"n": n, "fired": fired} if fired else {"n": n}


def apply(call):
    state = call.get("state") or {"n": 0}
    fired = state.get("fired", []) + [e["fired"] for e in call["events"] if "fired" in e]
    return 200, {"state": st(state["n"] + len(call["events"]), fired)}


def decide(call):
    """One decide call's (status, answer); an answer that is not JSON comes as bytes."""
    state = call.get("state") or {"n": 0}
    cmd = call["command"]
    fired = state.get("fired", [])
    good = {"events": [{"inc": 1}], "state": st(state["n"] + 1, fired), "reply": {"n": state["n"] + 1}}
    if "$timer" in cmd:
        f = cmd["$timer"]
        event = {"fired": {k: f[k] for k in ("name", "due", "missed", "command")}}
        return 200, {"events": [event], "state": st(state["n"] + 1, fired + [event["fired"]])}
    what = cmd.get("answer", "ok")
    if what == "timer":
        return 200, {**good, "timers": cmd.get("timers", []), "cancel": cmd.get("cancel", [])}
    if what in ("ok", "batchShort"):
        return 200, good
    if what == "notJson":
        return 200, b"<html>oops</html>"
    if what == "eventsNotList":
        return 200, {"events": {"inc": 1}, "state": {"n": 1}}
    if what == "noState":
        return 200, {"events": [{"inc": 1}]}
    if what == "status500":
        return 500, {"error": "boom"}
    if what == "bigState":
        return 200, {"events": [{"inc": 1}], "state": {"n": state["n"] + 1, "pad": "x" * cmd["bytes"]}}
    if what == "bigReply":
        return 200, {**good, "reply": "r" * cmd["bytes"]}
    if what == "slow":
        time.sleep(cmd["ms"] / 1000)
        return 200, good
    if what == "reject":
        return 200, {"rejected": "refused as asked"}
    return 200, good


class Handler(BaseHTTPRequestHandler):
    batch = 0
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
        kinds = {"kinds": [{"name": "faulty", "snapshotEvery": 4, "initial": {"n": 0}}]}
        if self.batch > 1:
            kinds["decideBatch"] = self.batch
        self.answer(kinds)

    def do_POST(self):
        call = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
        if self.path == "/v1/decide-batch":
            calls = call["calls"]
            answers = []
            for c in calls:
                status, body = decide(c)
                if status != 200:
                    answers.append({"error": "failed as asked"})
                elif not isinstance(body, dict):
                    answers.append({"events": "not JSON as asked"})
                else:
                    answers.append(body)
            if any(c["command"].get("answer") == "batchShort" for c in calls):
                answers = answers[:-1]
            self.answer({"answers": answers})
            return
        status, body = apply(call) if self.path == "/v1/apply" else decide(call)
        if isinstance(body, bytes):
            self.raw(status, body)
        else:
            self.answer(body, status)

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--batch", type=int, default=0)
    a = p.parse_args()
    Handler.batch = a.batch
    s = ThreadingHTTPServer(("127.0.0.1", a.port), Handler)
    s.daemon_threads = True
    s.serve_forever()
