#!/usr/bin/env python3
"""aether example application: bank accounts, in Python with the standard library only.

The app is a set of pure functions the aether sidecar in the same pod calls over loopback HTTP
(docs/PROTOCOL.md, "App protocol"). It keeps nothing between calls: the sidecar owns each account's
state, its event log, its routing and its moves between pods.

Kind `account`, state {"balance": int}:
  {"deposit": n}   n > 0                       -> event {"deposited": n}
  {"withdraw": n}  n > 0, refused on overdraft -> event {"withdrew": n}
  {"transfer": {"to": id, "amount": n}}        -> event {"sent": n, "to": id}, and a message to
                   account `id`: {"deposit": n}. The sidecar delivers it once the event is stored,
                   exactly once in effect, and brings the answer back as {"$reply": {...}}: a refused
                   deposit is refunded here (event {"refunded": n}).
  {"hold": {"id": h, "amount": n, "ttl": t}}  -> event {"held": n, "id": h}: n is set aside (out of the
                   balance, into "holds") and a timer "hold-h" is set for t (e.g. "15m"); if the hold is
                   not captured by then, the timer's firing releases it (event {"released": n, "id": h}).
  {"capture": h}   -> event {"captured": n, "id": h}: the held money is paid out; the timer is cancelled.
Every accepted command replies {"balance": <after>}. The state is {"balance": b}, with "holds": {h: n}
while there are any.

Run: python3 app.py [--listen 127.0.0.1:8000]   (or --port, AETHER_APP_PORT); the sidecar gets --app-url http://127.0.0.1:8000.
"""

import argparse
import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

KINDS = {"kinds": [{"name": "account", "snapshotEvery": 8, "initial": {"balance": 0}}]}


def amount(command, key):
    n = command.get(key)
    if not isinstance(n, int) or isinstance(n, bool) or n <= 0:
        raise ValueError(f"{key} takes a positive integer")
    return n


def decide(me, state, command):
    """(events, sends, timers, cancel) for a command, or raises ValueError with the reason it is refused."""
    if isinstance(command, dict):
        held = decide_holds(state, command)
        if held is not None:
            events, timers, cancel = held
            return events, [], timers, cancel
    events, sends = decide_money(me, state, command)
    return events, sends, [], []


def decide_holds(state, command):
    """(events, timers, cancel) for a hold, a capture or a hold's expiry; None for other commands."""
    holds = state.get("holds", {})
    if "hold" in command:
        h = command["hold"]
        hid, n, ttl = h.get("id"), amount(h, "amount"), h.get("ttl", "15m")
        if not isinstance(hid, str) or not hid or hid in holds:
            raise ValueError("hold needs a new string id")
        if n > state.get("balance", 0):
            raise ValueError(f"insufficient funds: balance {state.get('balance', 0)}, hold {n}")
        timer = {"name": f"hold-{hid}", "after": ttl, "command": {"expire": hid}}
        return [{"held": n, "id": hid}], [timer], []
    if "capture" in command:
        hid = command["capture"]
        if hid not in holds:
            raise ValueError(f"no hold {hid!r} (captured, released or never made)")
        return [{"captured": holds[hid], "id": hid}], [], [f"hold-{hid}"]
    if "$timer" in command:
        hid = command["$timer"]["command"].get("expire")
        if hid in holds:  # not captured in time: the money comes back
            return [{"released": holds[hid], "id": hid}], [], []
        return [], [], []
    return None


def decide_money(me, state, command):
    """(events, sends) for a command, or raises ValueError with the reason it is refused."""
    balance = state.get("balance", 0)
    if not isinstance(command, dict):
        raise ValueError("a command is an object")
    if "deposit" in command:
        return [{"deposited": amount(command, "deposit")}], []
    if "withdraw" in command:
        n = amount(command, "withdraw")
        if n > balance:
            raise ValueError(f"insufficient funds: balance {balance}, withdraw {n}")
        return [{"withdrew": n}], []
    if "transfer" in command:
        t = command["transfer"]
        to, n = t.get("to"), amount(t, "amount")
        if not isinstance(to, str) or not to or to == me:
            raise ValueError("transfer needs another account id in 'to'")
        if n > balance:
            raise ValueError(f"insufficient funds: balance {balance}, transfer {n}")
        send = {"actor": {"kind": "account", "id": to}, "command": {"deposit": n}}
        return [{"sent": n, "to": to}], [send]
    if "$reply" in command:
        r = command["$reply"]
        if "error" in r["outcome"]:  # the deposit was refused: the money comes back
            return [{"refunded": r["command"]["deposit"], "from": r["to"]["id"]}], []
        return [], []
    raise ValueError('unknown command: expected {"deposit": n}, {"withdraw": n}, {"transfer": {"to", "amount"}}, '
                     '{"hold": {"id", "amount", "ttl"}} or {"capture": id}')


def apply(state, event):
    balance = state.get("balance", 0)
    holds = dict(state.get("holds", {}))
    if "held" in event:
        balance -= event["held"]
        holds[event["id"]] = event["held"]
    elif "captured" in event:
        holds.pop(event["id"], None)
    elif "released" in event:
        balance += event["released"]
        holds.pop(event["id"], None)
    elif "deposited" in event:
        balance += event["deposited"]
    elif "withdrew" in event:
        balance -= event["withdrew"]
    elif "sent" in event:
        balance -= event["sent"]
    elif "refunded" in event:
        balance += event["refunded"]
    return {"balance": balance, "holds": holds} if holds else {"balance": balance}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # kept-alive connections
    # One segment per answer, sent at once: headers and body buffered together (flushed after each
    # request) and no Nagle delay, else every call waits ~40 ms for a delayed ACK.
    wbufsize = 1 << 16
    disable_nagle_algorithm = True

    def answer(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/v1/kinds":
            self.answer(200, KINDS)
        else:
            self.answer(404, {"error": f"no {self.path}"})

    def do_POST(self):
        length = int(self.headers.get("Content-Length", "0"))
        call = json.loads(self.rfile.read(length) or b"{}")
        state = call.get("state") or {"balance": 0}
        if self.path == "/v1/decide":
            try:
                events, sends, timers, cancel = decide(call.get("id"), state, call.get("command"))
            except (ValueError, KeyError, TypeError) as why:
                self.answer(200, {"rejected": str(why)})
                return
            for e in events:
                state = apply(state, e)
            answer = {"events": events, "state": state, "send": sends,
                      "reply": {"balance": state["balance"]}}
            if timers or cancel:
                answer.update(timers=timers, cancel=cancel)
            self.answer(200, answer)
        elif self.path == "/v1/apply":
            for e in call.get("events", []):
                state = apply(state, e)
            self.answer(200, {"state": state})
        else:
            self.answer(404, {"error": f"no {self.path}"})

    def log_message(self, *args):
        pass


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, default=int(os.environ.get("AETHER_APP_PORT", "8000")))
    p.add_argument("--host", default=os.environ.get("AETHER_APP_HOST", "127.0.0.1"))
    p.add_argument("--listen", help="host:port, in place of --host and --port")
    args = p.parse_args()
    if args.listen:
        args.host, _, port = args.listen.rpartition(":")
        args.port = int(port)
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    server.daemon_threads = True
    print(f"bank app on http://{args.host}:{args.port}", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
