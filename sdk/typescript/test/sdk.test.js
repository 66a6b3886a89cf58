// The SDK's own tests: kinds checked, the app protocol over real HTTP, the bank twin in memory.
import assert from "node:assert/strict";
import { test } from "node:test";
import { App, Client, AetherError, InvalidDecision, Kind, Rejected } from "../dist/index.js";
import { Harness, ms } from "../dist/testing.js";
import { account } from "../../../examples/bank-ts/app.js";

const nested = (depth) => { let v = 1; for (let i = 0; i < depth; i++) v = [v]; return v; };

test("a decision the sidecar would refuse names the kind and the field", () => {
  const cases = [
    [{ events: [{ x: 1 }], send: [{ kind: "account", id: "b", command: { $reply: 1 } }] }, "send[0].command"],
    [{ events: [{ x: 1 }], send: [{ kind: "No Such", id: "b", command: {} }] }, "send[0].kind"],
    [{ timers: [{ name: "has space", after: "1s" }] }, "timers[0].name"],
    [{ timers: [{ name: "t" }] }, "timers[0] needs after, at or every"],
    [{ cancel: [3] }, "cancel[0]"],
    [{ events: [nested(33)] }, "events[0]"],
    [{ events: Array(1025).fill({}) }, "1025 events"],
  ];
  for (const [decision, field] of cases) {
    const k = new Kind("bad", { decide: () => decision, apply: (s) => s });
    assert.throws(() => k.runDecide({}, {}, null), (e) => e instanceof InvalidDecision && e.message.includes("kind bad") && e.message.includes(field));
  }
});

test("durations read as the sidecar reads them", () => {
  assert.equal(ms("15m"), 900_000);
  assert.equal(ms("1h 30m"), 5_400_000);
  assert.equal(ms("500ms"), 500);
  assert.equal(ms(20), 20);
  assert.throws(() => ms("soon"));
});

test("the documented decide call gets the documented answer over HTTP", async () => {
  const broken = new Kind("broken", { decide: () => { throw new TypeError("boom"); } });
  const app = new App([account, broken]);
  const url = await app.listen(0);
  try {
    const post = async (path, body) => {
      const r = await fetch(url + path, { method: "POST", body: JSON.stringify(body), headers: { "Content-Type": "application/json" } });
      return [r.status, await r.json()];
    };
    const kinds = await (await fetch(url + "/v1/kinds")).json();
    assert.deepEqual(kinds.kinds[0], { name: "account", snapshotEvery: 8, initial: { balance: 0 } });
    const call = { kind: "account", id: "alice", version: 1, state: { balance: 100 }, command: { transfer: { to: "bob", amount: 30 } }, commandId: "t-1" };
    assert.deepEqual(await post("/v1/decide", call), [200, {
      events: [{ sent: 30, to: "bob" }], state: { balance: 70 }, reply: { balance: 70 },
      send: [{ actor: { kind: "account", id: "bob" }, command: { deposit: 30 } }],
    }]);
    call.command = { transfer: { to: "bob", amount: 150 } };
    assert.deepEqual(await post("/v1/decide", call), [200, { rejected: "insufficient funds: balance 100, transfer 150" }]);
    assert.deepEqual(await post("/v1/apply", { kind: "account", id: "alice", state: { balance: 100 }, events: [{ withdrew: 30 }] }),
      [200, { state: { balance: 70 } }]);
    const [status, body] = await post("/v1/decide", { kind: "broken", id: "x", version: 0, command: {} });
    assert.equal(status, 500);
    assert.match(body.error, /TypeError: boom/);
  } finally {
    await app.close();
  }
});

test("the bank in memory: transfers by sends applied once, holds released by timers, refunds", () => {
  const h = new Harness([account]);
  h.call("account", "alice", { deposit: 100 }, "d-1");
  assert.deepEqual(h.call("account", "alice", { transfer: { to: "bob", amount: 30 } }, "t-1").reply, { balance: 70 });
  h.call("account", "alice", { transfer: { to: "bob", amount: 30 } }, "t-1");
  assert.equal(h.run(), 1);
  assert.deepEqual(h.state("account", "bob"), { balance: 30 });
  assert.ok("rejected" in h.call("account", "bob", { withdraw: 31 }));
  h.call("account", "alice", { hold: { id: "h1", amount: 20, ttl: "1s" } });
  h.call("account", "alice", { hold: { id: "h2", amount: 10, ttl: "1s" } });
  h.call("account", "alice", { capture: "h2" });
  assert.equal(h.advance(999), 0);
  assert.equal(h.advance(1), 1);
  assert.deepEqual(h.state("account", "alice"), { balance: 60 });
  h.checkReplay();
});

test("a refusal is an answer; the client maps error answers to AetherError", async () => {
  const k = new Kind("tally", { initial: 0, apply: (s, e) => s + e.add, decide: (s, c) => {
    if (!(c.add > 0)) throw new Rejected("add takes a positive number");
    return { events: [{ add: c.add }], reply: s + c.add };
  } });
  assert.deepEqual(k.runDecide(0, { add: -1 }, null), { rejected: "add takes a positive number" });
  // A client against a server that is not the sidecar: the answer is still read as the protocol's.
  const app = new App([k]);
  const url = await app.listen(0);
  const client = new Client(url);
  try {
    await assert.rejects(client.actor("tally", "t").get(), (e) => e instanceof AetherError && e.status === 404);
  } finally {
    client.close();
    await app.close();
  }
});

test("the served app stops on SIGTERM, as a container's process 1 must", async () => {
  // Process 1 of a container ignores a signal it has no handler for: the app must have one.
  const { spawn } = await import("node:child_process");
  const app = new URL("../../../examples/bank-ts/app.js", import.meta.url).pathname;
  const p = spawn(process.execPath, [app, "--listen", "127.0.0.1:0"], { stdio: ["ignore", "ignore", "pipe"] });
  await new Promise((resolve) => p.stderr.once("data", resolve));
  const exited = new Promise((resolve) => p.once("exit", (code, signal) => resolve({ code, signal })));
  p.kill("SIGTERM");
  assert.deepEqual(await exited, { code: 0, signal: null });
});
