"""The SDK's own tests: kinds checked, the app protocol served over real HTTP, and the example bank
run in the in-memory harness (sends, replies, timers, retries, replay)."""

import importlib.util
import json
import sys
import unittest
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parents[1]))

from aether_actors import App, Decision, InvalidDecision, Kind, Rejected, Send, Timer  # noqa: E402
from aether_actors.testing import Harness  # noqa: E402


def bank():
    """The example bank's `account` kind (examples/bank/app.py), imported as a module."""
    path = HERE.parents[3] / "examples" / "bank" / "app.py"
    spec = importlib.util.spec_from_file_location("bank_app", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.account


def nested(depth):
    """A value nested `depth` levels deep."""
    v = 1
    for _ in range(depth):
        v = [v]
    return v


def counter():
    k = Kind("tally", initial=0)

    @k.apply
    def apply(state, event):
        return state + event["add"]

    @k.decide
    def decide(state, command, ctx):
        if command.get("add", 0) <= 0:
            raise Rejected("add takes a positive number")
        return Decision(events=[{"add": command["add"]}], reply=state + command["add"])

    return k


class KindChecks(unittest.TestCase):
    def decide(self, decision):
        k = Kind("bad")
        k.apply(lambda s, e: s)
        k.decide(lambda s, c, ctx: decision)
        return k.run_decide({}, {}, None)

    def test_a_decision_the_sidecar_would_refuse_names_the_kind_and_the_field(self):
        cases = [
            (Decision(events=[{"x": 1}], send=[Send("account", "b", {"$reply": 1})]), "send[0].command"),
            (Decision(events=[{"x": 1}], send=[Send("No Such", "b", {})]), "send[0].kind"),
            (Decision(events=[{"x": 1}], send=["not a send"]), "send[0]"),
            (Decision(timers=[Timer("has space", None, after="1s")]), "timers[0].name"),
            (Decision(timers=[Timer("t", None)]), "timers[0] needs after, at or every"),
            (Decision(cancel=[3]), "cancel[0]"),
            (Decision(events=[nested(33)]), "events[0]"),
            (Decision(events=[{}] * 1025), "1025 events"),
        ]
        for decision, field in cases:
            with self.assertRaises(InvalidDecision) as e:
                self.decide(decision)
            self.assertIn("kind bad", str(e.exception))
            self.assertIn(field, str(e.exception))

    def test_a_refusal_is_an_answer_and_a_reply_defaults_to_the_kinds(self):
        k = counter()
        self.assertEqual(k.run_decide(0, {"add": -1}, None), {"rejected": "add takes a positive number"})
        self.assertEqual(k.run_decide(2, {"add": 3}, None), {"events": [{"add": 3}], "state": 5, "reply": 5})

    def test_names_are_checked_when_the_kind_is_made(self):
        with self.assertRaises(ValueError):
            Kind("Has Capitals")
        with self.assertRaises(ValueError):
            Kind("ok", snapshot_every=0)


class Served(unittest.TestCase):
    """The app protocol over real HTTP, as the sidecar calls it."""

    @classmethod
    def setUpClass(cls):
        broken = Kind("broken")
        broken.decide(lambda s, c, ctx: 1 / 0)
        cls.app = App([bank(), counter(), broken])
        cls.url = cls.app.start()

    @classmethod
    def tearDownClass(cls):
        cls.app.stop()

    def post(self, path, body):
        req = urllib.request.Request(self.url + path, json.dumps(body).encode(), {"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def test_kinds(self):
        with urllib.request.urlopen(self.url + "/v1/kinds") as r:
            kinds = json.loads(r.read())["kinds"]
        self.assertEqual(kinds[0], {"name": "account", "snapshotEvery": 8, "initial": {"balance": 0}})
        self.assertEqual([k["name"] for k in kinds], ["account", "tally", "broken"])

    def test_the_documented_decide_call_gets_the_documented_answer(self):
        # docs/PROTOCOL.md, "App protocol": the transfer example, call and answer.
        call = {"kind": "account", "id": "alice", "version": 1, "state": {"balance": 100},
                "command": {"transfer": {"to": "bob", "amount": 30}}, "commandId": "t-1"}
        status, answer = self.post("/v1/decide", call)
        self.assertEqual(status, 200)
        self.assertEqual(answer, {"events": [{"sent": 30, "to": "bob"}], "state": {"balance": 70},
                                  "reply": {"balance": 70},
                                  "send": [{"actor": {"kind": "account", "id": "bob"}, "command": {"deposit": 30}}]})
        call["command"] = {"transfer": {"to": "bob", "amount": 150}}
        self.assertEqual(self.post("/v1/decide", call),
                         (200, {"rejected": "insufficient funds: balance 100, transfer 150"}))

    def test_apply_folds_events(self):
        status, answer = self.post("/v1/apply", {"kind": "account", "id": "alice", "state": {"balance": 100},
                                                 "events": [{"withdrew": 30}]})
        self.assertEqual((status, answer), (200, {"state": {"balance": 70}}))

    def test_the_apps_own_failure_is_a_500_the_sidecar_counts(self):
        status, answer = self.post("/v1/decide", {"kind": "broken", "id": "x", "version": 0, "state": None,
                                                  "command": {}})
        self.assertEqual(status, 500)
        self.assertIn("ZeroDivisionError", answer["error"])
        status, answer = self.post("/v1/decide", {"kind": "nope", "id": "x", "version": 0, "command": {}})
        self.assertEqual(status, 500)
        self.assertIn("no kind 'nope'", answer["error"])


class Stops(unittest.TestCase):
    def test_the_served_app_stops_on_sigterm_as_a_containers_process_1_must(self):
        # Process 1 of a container ignores a signal it has no handler for: the app must have one.
        import signal
        import subprocess

        app = Path(__file__).resolve().parents[3] / "examples" / "bank" / "app.py"
        p = subprocess.Popen([sys.executable, str(app), "--listen", "127.0.0.1:0"], stderr=subprocess.PIPE, text=True)
        try:
            self.assertIn("aether app", p.stderr.readline())
            p.send_signal(signal.SIGTERM)
            self.assertEqual(p.wait(timeout=10), 0, "exits 0 by its own handler, not by the signal")
        finally:
            p.kill()


class BankInMemory(unittest.TestCase):
    def test_transfers_by_sends_are_applied_once_and_replay_gives_the_same_state(self):
        h = Harness([bank()])
        self.assertEqual(h.call("account", "alice", {"deposit": 100}, "d-1")["state"], {"balance": 100})
        self.assertEqual(h.call("account", "alice", {"transfer": {"to": "bob", "amount": 30}}, "t-1")["reply"],
                         {"balance": 70})
        # A retry with the same id gets the first answer and sends nothing more.
        h.call("account", "alice", {"transfer": {"to": "bob", "amount": 30}}, "t-1")
        self.assertEqual(h.run(), 1)
        self.assertEqual(h.state("account", "bob"), {"balance": 30})
        self.assertIn("rejected", h.call("account", "bob", {"withdraw": 31}))
        h.check_replay()

    def test_a_hold_not_captured_is_released_by_its_timer_and_a_captured_one_never(self):
        h = Harness([bank()])
        h.call("account", "a", {"deposit": 50})
        h.call("account", "a", {"hold": {"id": "h1", "amount": 20, "ttl": "1s"}})
        h.call("account", "a", {"hold": {"id": "h2", "amount": 10, "ttl": "1s"}})
        h.call("account", "a", {"capture": "h2"})
        self.assertEqual(h.state("account", "a"), {"balance": 20, "holds": {"h1": 20}})
        self.assertEqual(h.advance(999), 0)
        self.assertEqual(h.advance(1), 1, "only h1's timer fires; h2's was cancelled")
        self.assertEqual(h.state("account", "a"), {"balance": 40})
        h.check_replay()

    def test_a_refused_send_comes_back_as_a_reply_the_sender_acts_on(self):
        h = Harness([bank()])
        h.call("account", "a", {"deposit": 10})
        # To a kind nobody hosts: the deposit is refused, and the money comes back.
        bank_kind = h.kinds["account"]
        original = bank_kind._decide

        def to_vault(state, command, ctx):
            if "transfer" in command:
                return Decision(events=[{"sent": 4, "to": "v"}], send=[Send("vault", "v", {"deposit": 4})])
            return original(state, command, ctx)

        bank_kind._decide = to_vault
        try:
            h.call("account", "a", {"transfer": {"to": "v", "amount": 4}})
            self.assertEqual(h.state("account", "a"), {"balance": 6})
            h.run()
        finally:
            bank_kind._decide = original
        self.assertEqual(h.state("account", "a"), {"balance": 10})
        h.check_replay()


if __name__ == "__main__":
    unittest.main()


class Conformance(unittest.TestCase):
    """sdk/conformance/bank.json against this SDK's server with the Python bank: the same vectors the
    TypeScript SDK runs with its twin."""

    def test_every_vector(self):
        vectors = json.loads((HERE.parents[2] / "conformance" / "bank.json").read_text())["cases"]
        app = App([bank()])
        url = app.start()
        try:
            for case in vectors:
                with self.subTest(case["name"]):
                    data = json.dumps(case["call"]).encode() if "call" in case else None
                    req = urllib.request.Request(url + case["path"], data, method=case["method"],
                                                 headers={"Content-Type": "application/json"})
                    try:
                        with urllib.request.urlopen(req) as r:
                            status, body = r.status, json.loads(r.read())
                    except urllib.error.HTTPError as e:
                        status, body = e.code, json.loads(e.read())
                    self.assertEqual(status, case["status"])
                    if "errorAt" in case:
                        failed = body["answers"][case["errorAt"]]
                        self.assertIn(case["errorContains"], failed["error"])
                        body["answers"][case["errorAt"]] = None
                    if "body" in case:
                        self.assertEqual(body, case["body"])
                    else:
                        self.assertIn(case["errorContains"], body["error"])
        finally:
            app.stop()
