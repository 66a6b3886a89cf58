#!/usr/bin/env node
// aether example application: bank accounts on the TypeScript/JavaScript SDK (sdk/typescript), the
// twin of examples/bank/app.py (same kind, commands, events and replies; see its docstring).
// Run: node app.js [--listen 127.0.0.1:8000] (or --port, AETHER_APP_PORT); tsc makes it of app.ts.
import { App, Kind, Rejected } from "../../sdk/typescript/dist/index.js";

type Account = { balance: number; holds?: Record<string, number> };

function amount(command: any, key: string, state?: Account): number {
  const n = command && typeof command === "object" ? command[key] : undefined;
  if (!Number.isInteger(n) || n <= 0) throw new Rejected(`${key} takes a positive integer`);
  if (state && n > state.balance) throw new Rejected(`insufficient funds: balance ${state.balance}, ${key} ${n}`);
  return n;
}

export const account = new Kind<Account>("account", {
  initial: { balance: 0 },
  snapshotEvery: 8,
  decide(state, command, ctx) {
    const holds = state.holds ?? {};
    const c = command && typeof command === "object" ? command : {};
    if ("deposit" in c) return { events: [{ deposited: amount(c, "deposit") }] };
    if ("withdraw" in c) return { events: [{ withdrew: amount(c, "withdraw", state) }] };
    if ("transfer" in c) {
      const t = c.transfer ?? {};
      const n = amount({ transfer: t.amount }, "transfer", state);
      if (typeof t.to !== "string" || !t.to || t.to === ctx.id) throw new Rejected("transfer needs another account id in 'to'");
      return { events: [{ sent: n, to: t.to }], send: [{ kind: "account", id: t.to, command: { deposit: n } }] };
    }
    if ("hold" in c) {
      const h = c.hold ?? {};
      const n = amount({ hold: h.amount }, "hold", state);
      if (typeof h.id !== "string" || !h.id || h.id in holds) throw new Rejected("hold needs a new string id");
      const expire = { name: `hold-${h.id}`, command: { expire: h.id }, after: h.ttl ?? "15m" };
      return { events: [{ held: n, id: h.id }], timers: [expire] };
    }
    if ("capture" in c) {
      if (!(c.capture in holds)) throw new Rejected(`no hold ${JSON.stringify(c.capture)} (captured, released or never made)`);
      return { events: [{ captured: holds[c.capture], id: c.capture }], cancel: [`hold-${c.capture}`] };
    }
    throw new Rejected('unknown command: expected {"deposit": n}, {"withdraw": n}, {"transfer": {"to", "amount"}}, {"hold": {"id", "amount", "ttl"}} or {"capture": id}');
  },
  // A refused deposit: the money comes back.
  onReply: (state, answer) => (answer.error ? { events: [{ refunded: (answer.command as { deposit: number }).deposit, from: answer.toId }] } : null),
  // A hold not captured in time: the money comes back.
  onTimer(state, firing) {
    const id = (firing.command as { expire?: string } | null)?.expire as string;
    return state.holds && id in state.holds ? { events: [{ released: state.holds[id], id }] } : null;
  },
  reply: (state) => ({ balance: state.balance }),
  apply(state, e) {
    const holds = { ...(state.holds ?? {}) };
    if ("held" in e) holds[e.id] = e.held;
    else if ("captured" in e || "released" in e) delete holds[e.id];
    const change = (e.deposited ?? 0) + (e.refunded ?? 0) + (e.released ?? 0) - (e.withdrew ?? 0) - (e.sent ?? 0) - (e.held ?? 0);
    return Object.keys(holds).length ? { balance: state.balance + change, holds } : { balance: state.balance + change };
  },
});

if (import.meta.url === `file://${process.argv[1]}`) await new App([account]).main();
