// A kind of actor as plain functions: decide (command -> decision) and apply (event -> state).
// The sidecar owns each actor's state, log, routing and moves; a kind only decides. A decision is
// checked here against docs/PROTOCOL.md's limits before it leaves the app, so a mistake is an error
// naming the kind and the field, not an `appError` the caller sees later.
// The types are those of docs/PROTOCOL.md, "App protocol".
export const MAX_EVENTS = 1024;
export const MAX_SENDS = 64;
export const MAX_TIMERS = 64;
export const MAX_DEPTH = 32;
const KIND_NAME = /^[a-z0-9-]{1,32}$/;
const TIMER_NAME = /^[A-Za-z0-9_.:-]{1,64}$/;
const BUILT_IN = new Set(["counter", "doc", "list"]);
/** Thrown from decide to refuse a command: the caller gets `rejected` with this reason. */
export class Rejected extends Error {
}
/** A decision the sidecar would refuse; the message names the kind and the field. */
export class InvalidDecision extends Error {
}
/** A kind of actor. */
export class Kind {
    name;
    initial;
    snapshotEvery;
    decideFn;
    applyFn;
    replyFn;
    onReplyFn;
    onTimerFn;
    constructor(name, { initial = null, snapshotEvery = 32, decide, apply, reply, onReply, onTimer } = {}) {
        if (!KIND_NAME.test(name))
            throw new Error(`kind name ${JSON.stringify(name)}: [a-z0-9-]{1,32}`);
        if (!(snapshotEvery >= 1 && snapshotEvery <= 1024))
            throw new Error(`kind ${name}: snapshotEvery is 1 to 1024`);
        this.name = name;
        this.initial = initial;
        this.snapshotEvery = snapshotEvery;
        this.decideFn = decide;
        this.applyFn = apply;
        this.replyFn = reply;
        this.onReplyFn = onReply;
        this.onTimerFn = onTimer;
    }
    info() {
        return { name: this.name, snapshotEvery: this.snapshotEvery, initial: this.initial };
    }
    fold(state, events) {
        if (!this.applyFn) {
            if (events.length)
                throw new InvalidDecision(`kind ${this.name}: events but no apply function`);
            return state;
        }
        for (const e of events)
            state = this.applyFn(state, e);
        return state;
    }
    /** The answer to a decide call: `{rejected}` or the checked decision with its state. */
    runDecide(state, command, ctx) {
        if (state === null || state === undefined)
            state = structuredClone(this.initial);
        let decision;
        try {
            decision = this.dispatch(state, command, ctx);
        }
        catch (e) {
            if (e instanceof Rejected)
                return { rejected: String(e.message).slice(0, 1024) };
            throw e;
        }
        return this.answer(state, decision ?? {});
    }
    dispatch(state, command, ctx) {
        if (command && typeof command === "object" && "$reply" in command) {
            if (!this.onReplyFn)
                return null;
            const r = command.$reply;
            const outcome = r.outcome ?? {};
            return this.onReplyFn(state, {
                id: r.id, toKind: r.to?.kind, toId: r.to?.id, command: r.command, ok: outcome.ok ?? null, error: outcome.error ?? null,
            }, ctx);
        }
        if (command && typeof command === "object" && "$timer" in command) {
            if (!this.onTimerFn)
                return null;
            const t = command.$timer;
            return this.onTimerFn(state, { name: t.name, due: t.due, missed: t.missed ?? 0, command: t.command ?? null }, ctx);
        }
        if (!this.decideFn)
            throw new Rejected(`kind ${this.name} takes no commands`);
        return this.decideFn(state, command, ctx);
    }
    /** The wire answer of decision `d` taken on `state`, checked. */
    answer(state, d) {
        const where = `kind ${this.name}`;
        // A decision may come from JavaScript, untyped: every field is checked as if it were unknown.
        const events = d.events ?? [];
        const send = d.send ?? [];
        const timers = d.timers ?? [];
        const cancel = d.cancel ?? [];
        if (!Array.isArray(events))
            throw new InvalidDecision(`${where}: events must be an array`);
        if (events.length > MAX_EVENTS)
            throw new InvalidDecision(`${where}: ${events.length} events, at most ${MAX_EVENTS}`);
        events.forEach((e, i) => checkDepth(e, `${where}: events[${i}]`));
        if (send.length > MAX_SENDS)
            throw new InvalidDecision(`${where}: ${send.length} sends, at most ${MAX_SENDS}`);
        const sends = send.map((s, i) => {
            if (!s || typeof s.kind !== "string" || (!KIND_NAME.test(s.kind) && !BUILT_IN.has(s.kind))) {
                throw new InvalidDecision(`${where}: send[${i}].kind ${JSON.stringify(s?.kind)} is no kind name`);
            }
            if (typeof s.id !== "string")
                throw new InvalidDecision(`${where}: send[${i}].id must be a string`);
            if (s.command && typeof s.command === "object" && !Array.isArray(s.command)
                && Object.keys(s.command).some((k) => k.startsWith("$"))) {
                throw new InvalidDecision(`${where}: send[${i}].command has a key starting with $ (the nodes' own)`);
            }
            checkDepth(s.command, `${where}: send[${i}].command`);
            return { actor: { kind: s.kind, id: s.id }, command: s.command ?? null };
        });
        if (timers.length > MAX_TIMERS || cancel.length > MAX_TIMERS) {
            throw new InvalidDecision(`${where}: at most ${MAX_TIMERS} timers and ${MAX_TIMERS} cancels per decision`);
        }
        const wireTimers = timers.map((t, i) => {
            if (!t || !TIMER_NAME.test(t.name ?? "")) {
                throw new InvalidDecision(`${where}: timers[${i}].name ${JSON.stringify(t?.name)}: [A-Za-z0-9_.:-]{1,64}`);
            }
            if (t.after !== undefined && t.at !== undefined)
                throw new InvalidDecision(`${where}: timers[${i}] has both after and at`);
            if (t.after === undefined && t.at === undefined && t.every === undefined) {
                throw new InvalidDecision(`${where}: timers[${i}] needs after, at or every`);
            }
            const out = { name: t.name, command: t.command ?? null };
            for (const k of ["after", "at", "every"])
                if (t[k] !== undefined)
                    out[k] = t[k];
            if (t.catchUp !== undefined)
                out.catchUp = t.catchUp;
            return out;
        });
        cancel.forEach((name, i) => {
            if (typeof name !== "string" || !TIMER_NAME.test(name)) {
                throw new InvalidDecision(`${where}: cancel[${i}] ${JSON.stringify(name)} is no timer name`);
            }
        });
        const next = this.fold(state, events);
        checkDepth(next, `${where}: state`);
        const out = { events, state: next };
        const reply = d.reply !== undefined ? d.reply : this.replyFn ? this.replyFn(next) : undefined;
        if (reply !== undefined && reply !== null) {
            checkDepth(reply, `${where}: reply`);
            out.reply = reply;
        }
        if (sends.length)
            out.send = sends;
        if (wireTimers.length)
            out.timers = wireTimers;
        if (cancel.length)
            out.cancel = [...cancel];
        return out;
    }
}
/** Values nest at most 32 levels deep (arrays and objects), as the sidecar requires. */
export function checkDepth(value, where, depth = 1) {
    if (value && typeof value === "object") {
        if (depth > MAX_DEPTH)
            throw new InvalidDecision(`${where} nests deeper than ${MAX_DEPTH} levels`);
        for (const v of Object.values(value))
            checkDepth(v, where, depth + 1);
    }
}
