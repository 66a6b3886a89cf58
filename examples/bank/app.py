#!/usr/bin/env python3
"""aether example application: bank accounts, on the Python SDK (sdk/python, `aether_actors`).

Kind `account`, state {"balance": int}, with "holds": {id: n} while there are any:
  {"deposit": n}, {"withdraw": n} (n > 0, no overdraft) -> event {"deposited": n} / {"withdrew": n}
  {"transfer": {"to": id, "amount": n}} -> event {"sent": n, "to": id} and {"deposit": n} sent to account
      `id`, exactly once in effect; a refused deposit is refunded when its answer comes back.
  {"hold": {"id": h, "amount": n, "ttl": t}} -> event {"held": n, "id": h}: n set aside, and a timer
      "hold-h" for t (e.g. "15m") that releases it unless {"capture": h} pays it out first.
Every accepted command replies {"balance": <after>}. Run: python3 app.py [--listen 127.0.0.1:8000]
(or --port, AETHER_APP_PORT); the sidecar gets --app-url http://127.0.0.1:8000.
"""

import sys
from pathlib import Path

try:
    from aether_actors import App, Decision, Kind, Rejected, Send, Timer
except ImportError:  # from a checkout, without `pip install ./sdk/python`
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "sdk" / "python"))
    from aether_actors import App, Decision, Kind, Rejected, Send, Timer

account = Kind("account", initial={"balance": 0}, snapshot_every=8)


def amount(command, key, state=None):
    """A positive integer under `key`; with `state`, one the balance covers."""
    n = command.get(key) if isinstance(command, dict) else None
    if not isinstance(n, int) or isinstance(n, bool) or n <= 0:
        raise Rejected(f"{key} takes a positive integer")
    if state is not None and n > state["balance"]:
        raise Rejected(f"insufficient funds: balance {state['balance']}, {key} {n}")
    return n


@account.decide
def decide(state, command, ctx):
    holds = state.get("holds", {})
    c = command if isinstance(command, dict) else {}
    if "deposit" in c:
        return Decision(events=[{"deposited": amount(c, "deposit")}])
    if "withdraw" in c:
        return Decision(events=[{"withdrew": amount(c, "withdraw", state)}])
    if "transfer" in c:
        t = c["transfer"] if isinstance(c["transfer"], dict) else {}
        n, to = amount({"transfer": t.get("amount")}, "transfer", state), t.get("to")
        if not isinstance(to, str) or not to or to == ctx.id:
            raise Rejected("transfer needs another account id in 'to'")
        return Decision(events=[{"sent": n, "to": to}], send=[Send("account", to, {"deposit": n})])
    if "hold" in c:
        h = c["hold"] if isinstance(c["hold"], dict) else {}
        n, hid = amount({"hold": h.get("amount")}, "hold", state), h.get("id")
        if not isinstance(hid, str) or not hid or hid in holds:
            raise Rejected("hold needs a new string id")
        expire = Timer(f"hold-{hid}", {"expire": hid}, after=h.get("ttl", "15m"))
        return Decision(events=[{"held": n, "id": hid}], timers=[expire])
    if c.get("capture") in holds:
        hid = c["capture"]
        return Decision(events=[{"captured": holds[hid], "id": hid}], cancel=[f"hold-{hid}"])
    if "capture" in c:
        raise Rejected(f"no hold {c['capture']!r} (captured, released or never made)")
    raise Rejected('unknown command: expected {"deposit": n}, {"withdraw": n}, {"transfer": {"to", "amount"}}, '
                   '{"hold": {"id", "amount", "ttl"}} or {"capture": id}')


@account.on_reply
def deposit_answered(state, answer, ctx):
    if answer.error is not None:  # the deposit was refused: the money comes back
        return Decision(events=[{"refunded": answer.command["deposit"], "from": answer.to_id}])


@account.on_timer
def hold_expired(state, firing, ctx):
    hid = (firing.command or {}).get("expire")
    if hid in state.get("holds", {}):  # not captured in time: the money comes back
        return Decision(events=[{"released": state["holds"][hid], "id": hid}])


@account.reply
def balance(state):
    return {"balance": state["balance"]}


@account.apply
def apply(state, event):
    holds = dict(state.get("holds", {}))
    if "held" in event:
        holds[event["id"]] = event["held"]
    elif "captured" in event or "released" in event:
        holds.pop(event["id"], None)
    change = (event.get("deposited", 0) + event.get("refunded", 0) + event.get("released", 0)
              - event.get("withdrew", 0) - event.get("sent", 0) - event.get("held", 0))
    return {"balance": state["balance"] + change, **({"holds": holds} if holds else {})}


if __name__ == "__main__":
    App([account]).main(__doc__.splitlines()[0])
