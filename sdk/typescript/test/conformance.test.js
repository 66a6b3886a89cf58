// sdk/conformance/bank.json against this SDK's server with the TypeScript bank twin: the same
// vectors the Python SDK runs with its bank.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";
import { App } from "../dist/index.js";
import { account } from "../../../examples/bank-ts/app.js";

const vectors = JSON.parse(readFileSync(new URL("../../conformance/bank.json", import.meta.url), "utf8")).cases;

test("every conformance vector", async (t) => {
  const app = new App([account]);
  const url = await app.listen(0);
  try {
    for (const c of vectors) {
      await t.test(c.name, async () => {
        const r = await fetch(url + c.path, {
          method: c.method,
          body: c.call ? JSON.stringify(c.call) : undefined,
          headers: { "Content-Type": "application/json" },
        });
        const body = await r.json();
        assert.equal(r.status, c.status);
        if ("errorAt" in c) {
          assert.ok(body.answers[c.errorAt].error.includes(c.errorContains), body.answers[c.errorAt].error);
          body.answers[c.errorAt] = null;
        }
        if ("body" in c) assert.deepEqual(body, c.body);
        else assert.ok(body.error.includes(c.errorContains), body.error);
      });
    }
  } finally {
    await app.close();
  }
});
