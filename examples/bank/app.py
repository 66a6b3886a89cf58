#!/usr/bin/env python3
"""aether example application: bank accounts, on the Python SDK (sdk/python, `aether_actors`).

Kind `account`, state {"balance": int}, with "holds": {id: n} while there are any:
  {"deposit": n}   n > 0                       -> event {"deposited": n}
  {"withdraw": n}  n > 0, refused on overdraft -> event {"withdrew": n}
  {"transfer": {"to": id, "amount": n}}        -> event {"sent": n, "to": id}, and {"deposit": n} sent to
                   account `id`, exactly once in effect; a refused deposit is refunded here when its
                   answer comes back (event {"refunded": n}).
  {"hold": {"id": h, "amount": n, "ttl": t}}  -> event {"held": n, "id": h}: n set aside, and a timer
                   "hold-h" set for t (e.g. "15m") that releases it unless it is captured first.
  {"capture": h}   -> event {"captured": n, "id": h}: the held money is paid out; the timer is cancelled.
Every accepted command replies {"balance": <after>}.

Run: python3 app.py [--listen 127.0.0.1:8000]   (or --port, AETHER_APP_PORT); the sidecar gets --app-url http://127.0.0.1:8000.
"""

import argparse
import os
import sys
from pathlib import Path

try:
    from aether_actors import App, Decision, Kind, Rejected, Send, Timer
except ImportError:  # from a checkout, without `pip install ./sdk/python`
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "sdk" / "python"))
    from aether_actors import App, Decision, Kind, Rejected, Send, Timer

account = Kind("account", initial={"balance": 0}, snapshot_every=8)


def amount(command, key):
    n = command.get(key) if isinstance(command, dict) else None
    if not isinstance(n, int) or isinstance(n, bool) or n <= 0:
        raise Rejected(f"{key} takes a positive integer")
    return n


def funds(state, n, what):
    if n > state.get("balance", 0):
        raise Rejected(f"insufficient funds: balance {state.get('balance', 0)}, {what} {n}")


@account.decide
def decide(state, command, ctx):
    holds = state.get("holds", {})
    if not isinstance(command, dict):
        raise Rejected("a command is an object")
    if "deposit" in command:
        return Decision(events=[{"deposited": amount(command, "deposit")}])
    if "withdraw" in command:
        n = amount(command, "withdraw")
        funds(state, n, "withdraw")
        return Decision(events=[{"withdrew": n}])
    if "transfer" in command:
        t = command["transfer"]
        to, n = t.get("to") if isinstance(t, dict) else None, amount(t, "amount")
        if not isinstance(to, str) or not to or to == ctx.id:
            raise Rejected("transfer needs another account id in 'to'")
        funds(state, n, "transfer")
        return Decision(events=[{"sent": n, "to": to}], send=[Send("account", to, {"deposit": n})])
    if "hold" in command:
        h = command["hold"]
        hid, n = h.get("id") if isinstance(h, dict) else None, amount(h, "amount")
        if not isinstance(hid, str) or not hid or hid in holds:
            raise Rejected("hold needs a new string id")
        funds(state, n, "hold")
        expire = Timer(f"hold-{hid}", {"expire": hid}, after=h.get("ttl", "15m"))
        return Decision(events=[{"held": n, "id": hid}], timers=[expire])
    if "capture" in command:
        hid = command["capture"]
        if not isinstance(hid, str) or hid not in holds:
            raise Rejected(f"no hold {hid!r} (captured, released or never made)")
        return Decision(events=[{"captured": holds[hid], "id": hid}], cancel=[f"hold-{hid}"])
    raise Rejected('unknown command: expected {"deposit": n}, {"withdraw": n}, {"transfer": {"to", "amount"}}, '
                   '{"hold": {"id", "amount", "ttl"}} or {"capture": id}')


@account.on_reply
def deposit_answered(state, answer, ctx):
    if answer.error is not None:  # the deposit was refused: the money comes back
        return Decision(events=[{"refunded": answer.command["deposit"], "from": answer.to_id}])
    return None


@account.on_timer
def hold_expired(state, firing, ctx):
    hid = (firing.command or {}).get("expire")
    holds = state.get("holds", {})
    if hid in holds:  # not captured in time: the money comes back
        return Decision(events=[{"released": holds[hid], "id": hid}])
    return None


@account.reply
def balance(state):
    return {"balance": state["balance"]}


@account.apply
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
    else:
        balance += event.get("deposited", 0) + event.get("refunded", 0)
        balance -= event.get("withdrew", 0) + event.get("sent", 0)
    return {"balance": balance, "holds": holds} if holds else {"balance": balance}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, default=int(os.environ.get("AETHER_APP_PORT", "8000")))
    p.add_argument("--host", default=os.environ.get("AETHER_APP_HOST", "127.0.0.1"))
    p.add_argument("--listen", help="host:port, in place of --host and --port")
    args = p.parse_args()
    if args.listen:
        args.host, _, port = args.listen.rpartition(":")
        args.port = int(port)
    App([account]).serve(args.host, args.port)


if __name__ == "__main__":
    main()
