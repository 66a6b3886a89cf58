// The SDK's client against a real sidecar (run by tests/tests/it/app_protocol.rs with a node whose
// app is examples/bank-ts/app.js): ids and retries, refusals and unknown kinds as AetherErrors with
// the protocol's codes, a transfer's send arriving, timers. Exits non-zero on any mismatch.
import assert from "node:assert/strict";
import { AetherError, Client } from "../dist/index.js";

const api = process.argv[process.argv.indexOf("--api") + 1];
const client = new Client(api);
const expectError = async (p, code, status) => {
  await assert.rejects(p, (e) => e instanceof AetherError && e.code === code && e.status === status);
};
try {
  const alice = client.actor("account", "ts-alice");
  let r = await alice.call({ deposit: 100 }, { commandId: "ts-dep-1" });
  assert.deepEqual([r.state, r.version, r.commandId], [{ balance: 100 }, 1, "ts-dep-1"]);
  r = await alice.call({ deposit: 100 }, { commandId: "ts-dep-1" });
  assert.deepEqual([r.state, r.version], [{ balance: 100 }, 1], "a retry is applied once");
  await expectError(alice.call({ withdraw: 500 }), "rejected", 409);
  r = await alice.call({ transfer: { to: "ts-bob", amount: 30 } }, { commandId: "ts-t-1" });
  assert.deepEqual(r.reply, { balance: 70 });
  const bob = client.actor("account", "ts-bob");
  const deadline = Date.now() + 20_000;
  while (JSON.stringify((await bob.get()).state) !== JSON.stringify({ balance: 30 })) {
    assert.ok(Date.now() < deadline, "the transfer's deposit never arrived");
    await new Promise((ok) => setTimeout(ok, 50));
  }
  await expectError(client.actor("nope", "x").get(), "unknownKind", 404);
  await alice.call({ hold: { id: "h1", amount: 5, ttl: "1h" } }, { commandId: "ts-h-1" });
  assert.deepEqual((await alice.timers()).map((t) => t.name), ["hold-h1"]);
  console.log("sdk client: ok");
} finally {
  client.close();
}
