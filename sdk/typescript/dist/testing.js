// Actors in memory, for unit tests: no sidecar, no NATS. The Harness keeps each actor's events and
// state as the sidecar would, delivers sends one at a time in the order each sender recorded them,
// brings each answer back as a `$reply`, fires timers when the test moves its clock, and checks that
// replaying an actor's events from its initial state gives the state it holds.
import { createHash } from "node:crypto";
import { InvalidDecision } from "./kind.js";
const UNITS = { ms: 1, s: 1000, sec: 1000, m: 60_000, min: 60_000, h: 3_600_000, d: 86_400_000, day: 86_400_000, days: 86_400_000 };
/** A duration: milliseconds, or text such as "15m", "1h 30m", "500ms". */
export function ms(v) {
    if (typeof v === "number")
        return v;
    let total = 0;
    const re = /\s*([0-9.]+)\s*([a-z]+)/gy;
    const text = String(v).trim();
    let m;
    let end = 0;
    while ((m = re.exec(text)) !== null) {
        if (!(m[2] in UNITS))
            throw new Error(`duration ${JSON.stringify(v)}`);
        total += Math.floor(Number(m[1]) * UNITS[m[2]]);
        end = re.lastIndex;
    }
    if (end !== text.length || !text)
        throw new Error(`duration ${JSON.stringify(v)}`);
    return total;
}
const h = (kind, id) => createHash("sha256").update(`${kind}/${id}`).digest("hex").slice(0, 16);
/** Kinds in memory: no sidecar, no NATS. */
export class Harness {
    kinds;
    actors = new Map();
    nowMs;
    outbox = [];
    constructor(kinds, { nowMs = 1_800_000_000_000 } = {}) {
        this.kinds = new Map(kinds.map((k) => [k.name, k]));
        this.nowMs = nowMs;
    }
    kind(name) {
        const k = this.kinds.get(name);
        if (!k)
            throw new InvalidDecision(`no kind ${JSON.stringify(name)} in the harness`);
        return k;
    }
    actor(kind, id) {
        const key = `${kind}\u0000${id}`;
        let a = this.actors.get(key);
        if (!a) {
            const k = this.kind(kind);
            a = { kind, id, state: structuredClone(k.initial), events: [], version: 0, timers: new Map(), seen: new Map() };
            this.actors.set(key, a);
        }
        return a;
    }
    state(kind, id) {
        return this.actor(kind, id).state;
    }
    /** Decides `command`: `{rejected}` or `{version, state, reply}`; a repeated commandId gets the first answer. */
    call(kind, id, command, commandId = null) {
        const a = this.actor(kind, id);
        if (commandId !== null && a.seen.has(commandId))
            return a.seen.get(commandId);
        const ctx = { kind, id, version: a.version, commandId };
        const answer = this.kind(kind).runDecide(structuredClone(a.state), structuredClone(command), ctx);
        let result;
        if ("rejected" in answer) {
            result = { rejected: answer.rejected };
        }
        else {
            if (answer.events.length || answer.send || answer.timers || answer.cancel) {
                a.version += 1;
                a.events.push(...answer.events);
                a.state = answer.state;
                (answer.send ?? []).forEach((s, i) => {
                    this.outbox.push({ from: [kind, id], sid: `$send-${h(kind, id)}-${a.version}-${i}`, to: s.actor, command: s.command });
                });
                for (const t of answer.timers ?? [])
                    a.timers.set(t.name, this.resolve(t));
                for (const name of answer.cancel ?? [])
                    a.timers.delete(name);
            }
            result = { version: a.version, state: a.state, reply: answer.reply };
        }
        if (commandId !== null)
            a.seen.set(commandId, result);
        return result;
    }
    /** Delivers pending sends, oldest first, each answer back as a `$reply`; returns how many. */
    run(limit = 100_000) {
        let n = 0;
        while (this.outbox.length) {
            if (++n > limit)
                throw new Error(`more than ${limit} sends: do the actors send to each other forever?`);
            const { from, sid, to, command } = this.outbox.shift();
            let outcome;
            if (this.kinds.has(to.kind)) {
                const got = this.call(to.kind, to.id, command, sid);
                outcome = "rejected" in got
                    ? { error: { code: "rejected", message: got.rejected } }
                    : { ok: { version: got.version, state: got.state, node: "harness", ...(got.reply !== undefined ? { reply: got.reply } : {}) } };
            }
            else {
                outcome = { error: { code: "unknownKind", message: `no actor kind ${JSON.stringify(to.kind)}` } };
            }
            this.call(from[0], from[1], { $reply: { id: sid, to, command, outcome } }, sid.replace("$send-", "$reply-"));
        }
        return n;
    }
    /** Moves the clock `ms` on and fires every timer due (periodic ones once, `missed` counting
     * skipped ticks), delivering the sends they cause; returns how many fired. */
    advance(byMs) {
        this.nowMs += byMs;
        let fired = 0;
        for (;;) {
            const due = [];
            for (const a of this.actors.values())
                for (const t of a.timers.values())
                    if (t.due <= this.nowMs)
                        due.push([t.due, a, t]);
            if (!due.length)
                return fired;
            due.sort((x, y) => x[0] - y[0] || x[2].name.localeCompare(y[2].name));
            let [when, a, t] = due[0];
            let missed = 0;
            if (t.every) {
                missed = Math.floor((this.nowMs - when) / t.every);
                when += missed * t.every;
                t.due = when + t.every;
            }
            else {
                a.timers.delete(t.name);
            }
            const cmd = { $timer: { name: t.name, due: when, missed, command: t.command ?? null } };
            this.call(a.kind, a.id, cmd, `$timer-${h(a.kind, a.id)}-${when}-${t.name}`);
            fired += 1;
            this.run();
        }
    }
    /** Every actor's events, applied from its kind's initial state, give the state it holds (throws
     * if not). */
    checkReplay() {
        for (const a of this.actors.values()) {
            const k = this.kind(a.kind);
            const again = k.fold(structuredClone(k.initial), structuredClone(a.events));
            if (JSON.stringify(again) !== JSON.stringify(a.state)) {
                throw new Error(`${a.kind}/${a.id}: replaying its events gives ${JSON.stringify(again)}, it holds ${JSON.stringify(a.state)}`);
            }
        }
    }
    resolve(t) {
        const every = t.every !== undefined ? ms(t.every) : null;
        let due;
        if (t.at !== undefined)
            due = typeof t.at === "number" ? t.at : Date.parse(t.at);
        else if (t.after !== undefined)
            due = this.nowMs + ms(t.after);
        else
            due = this.nowMs + (every ?? 0);
        return { name: t.name, due, command: t.command ?? null, ...(every ? { every } : {}) };
    }
}
