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

export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

/** Where a decide call comes from. */
export interface Context {
  kind: string;
  id: string;
  /** Records of the actor so far. */
  version: number;
  /** The caller's command id (`$send-...` for a send, `$timer-...` for a firing), or null. */
  commandId: string | null;
}

/** A command to another actor, delivered exactly once in effect after the record lands. */
export interface Send {
  kind: string;
  id: string;
  command: Json;
}

/** A command the actor schedules to itself. Durations: ms or text ("15m"); times: epoch ms or RFC 3339. */
export interface Timer {
  name: string;
  command?: Json;
  after?: number | string;
  at?: number | string;
  every?: number | string;
  catchUp?: number;
}

/** What a command does; the new state follows from `apply` over `events`. */
export interface Decision {
  events?: Json[];
  /** What the caller gets back (default: the kind's `reply` of the new state, if any). */
  reply?: Json;
  send?: Send[];
  timers?: Timer[];
  cancel?: string[];
}

/** The receiver's answer to one of this actor's sends (the `$reply` command). */
export interface SendReply {
  id: string;
  toKind: string;
  toId: string;
  command: Json;
  ok: { version: number; state: Json; node: string; reply?: Json } | null;
  error: { code: string; message: string } | null;
}

/** A timer that came due (the `$timer` command): use `due`, not the app's clock. */
export interface Firing {
  name: string;
  due: number;
  missed: number;
  command: Json;
}

export interface KindOptions<S> {
  initial?: S;
  /** A record carries the whole state every this many records (1 to 1024, default 32). */
  snapshotEvery?: number;
  decide?: (state: S, command: any, ctx: Context) => Decision | null | undefined;
  apply?: (state: S, event: any) => S;
  /** The caller's reply from the new state when a decision names none. */
  reply?: (state: S) => Json;
  onReply?: (state: S, answer: SendReply, ctx: Context) => Decision | null | undefined;
  onTimer?: (state: S, firing: Firing, ctx: Context) => Decision | null | undefined;
}

/** An actor as a send names it on the wire. */
export type ActorRef = { kind: string; id: string };

/** A send as the sidecar takes it. */
export type WireSend = { actor: ActorRef; command: Json };

/** A timer as the sidecar takes it. */
export type WireTimer = {
  name: string;
  command: Json;
  after?: number | string;
  at?: number | string;
  every?: number | string;
  catchUp?: number;
};

/** A decision as the sidecar takes it, checked, with the state it leads to. */
export interface Decided<S> {
  events: Json[];
  state: S;
  reply?: Json;
  send?: WireSend[];
  timers?: WireTimer[];
  cancel?: string[];
}

/** The wire answer to a decide call: `{rejected}` or the checked decision with its state. */
export type DecideAnswer<S> = { rejected: string } | Decided<S>;

/** The `$reply` command the sidecar brings an actor: the outcome of one of its sends. */
interface ReplyCommand {
  $reply: {
    id: string;
    to?: ActorRef;
    command: Json;
    outcome?: { ok?: SendReply["ok"]; error?: SendReply["error"] };
  };
}

/** The `$timer` command the sidecar brings an actor when one of its timers comes due. */
interface TimerCommand {
  $timer: { name: string; due: number; missed?: number; command?: Json };
}

/** Thrown from decide to refuse a command: the caller gets `rejected` with this reason. */
export class Rejected extends Error {}

/** A decision the sidecar would refuse; the message names the kind and the field. */
export class InvalidDecision extends Error {}

/** A kind of actor. */
export class Kind<S = any> {
  readonly name: string;
  readonly initial: S;
  readonly snapshotEvery: number;
  private readonly decideFn: KindOptions<S>["decide"];
  private readonly applyFn: KindOptions<S>["apply"];
  private readonly replyFn: KindOptions<S>["reply"];
  private readonly onReplyFn: KindOptions<S>["onReply"];
  private readonly onTimerFn: KindOptions<S>["onTimer"];

  constructor(
    name: string,
    { initial = null as S, snapshotEvery = 32, decide, apply, reply, onReply, onTimer }: KindOptions<S> = {},
  ) {
    if (!KIND_NAME.test(name)) throw new Error(`kind name ${JSON.stringify(name)}: [a-z0-9-]{1,32}`);
    if (!(snapshotEvery >= 1 && snapshotEvery <= 1024)) throw new Error(`kind ${name}: snapshotEvery is 1 to 1024`);
    this.name = name;
    this.initial = initial;
    this.snapshotEvery = snapshotEvery;
    this.decideFn = decide;
    this.applyFn = apply;
    this.replyFn = reply;
    this.onReplyFn = onReply;
    this.onTimerFn = onTimer;
  }

  info(): { name: string; snapshotEvery: number; initial: S } {
    return { name: this.name, snapshotEvery: this.snapshotEvery, initial: this.initial };
  }

  fold(state: S, events: Json[]): S {
    if (!this.applyFn) {
      if (events.length) throw new InvalidDecision(`kind ${this.name}: events but no apply function`);
      return state;
    }
    for (const e of events) state = this.applyFn(state, e);
    return state;
  }

  /** The answer to a decide call: `{rejected}` or the checked decision with its state. */
  runDecide(state: S | null | undefined, command: Json, ctx: Context): DecideAnswer<S> {
    if (state === null || state === undefined) state = structuredClone(this.initial);
    let decision: Decision | null | undefined;
    try {
      decision = this.dispatch(state, command, ctx);
    } catch (e) {
      if (e instanceof Rejected) return { rejected: String(e.message).slice(0, 1024) };
      throw e;
    }
    return this.answer(state, decision ?? {});
  }

  private dispatch(state: S, command: Json, ctx: Context): Decision | null | undefined {
    if (command && typeof command === "object" && "$reply" in command) {
      if (!this.onReplyFn) return null;
      const r = (command as unknown as ReplyCommand).$reply;
      const outcome = r.outcome ?? {};
      return this.onReplyFn(state, {
        id: r.id, toKind: r.to?.kind as string, toId: r.to?.id as string, command: r.command, ok: outcome.ok ?? null, error: outcome.error ?? null,
      }, ctx);
    }
    if (command && typeof command === "object" && "$timer" in command) {
      if (!this.onTimerFn) return null;
      const t = (command as unknown as TimerCommand).$timer;
      return this.onTimerFn(state, { name: t.name, due: t.due, missed: t.missed ?? 0, command: t.command ?? null }, ctx);
    }
    if (!this.decideFn) throw new Rejected(`kind ${this.name} takes no commands`);
    return this.decideFn(state, command, ctx);
  }

  /** The wire answer of decision `d` taken on `state`, checked. */
  private answer(state: S, d: Decision): Decided<S> {
    const where = `kind ${this.name}`;
    // A decision may come from JavaScript, untyped: every field is checked as if it were unknown.
    const events: Json[] = d.events ?? [];
    const send: Partial<Send>[] = d.send ?? [];
    const timers: Partial<Timer>[] = d.timers ?? [];
    const cancel: unknown[] = d.cancel ?? [];
    if (!Array.isArray(events)) throw new InvalidDecision(`${where}: events must be an array`);
    if (events.length > MAX_EVENTS) throw new InvalidDecision(`${where}: ${events.length} events, at most ${MAX_EVENTS}`);
    events.forEach((e, i) => checkDepth(e, `${where}: events[${i}]`));
    if (send.length > MAX_SENDS) throw new InvalidDecision(`${where}: ${send.length} sends, at most ${MAX_SENDS}`);
    const sends = send.map((s, i): WireSend => {
      if (!s || typeof s.kind !== "string" || (!KIND_NAME.test(s.kind) && !BUILT_IN.has(s.kind))) {
        throw new InvalidDecision(`${where}: send[${i}].kind ${JSON.stringify(s?.kind)} is no kind name`);
      }
      if (typeof s.id !== "string") throw new InvalidDecision(`${where}: send[${i}].id must be a string`);
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
    const wireTimers = timers.map((t, i): WireTimer => {
      if (!t || !TIMER_NAME.test(t.name ?? "")) {
        throw new InvalidDecision(`${where}: timers[${i}].name ${JSON.stringify(t?.name)}: [A-Za-z0-9_.:-]{1,64}`);
      }
      if (t.after !== undefined && t.at !== undefined) throw new InvalidDecision(`${where}: timers[${i}] has both after and at`);
      if (t.after === undefined && t.at === undefined && t.every === undefined) {
        throw new InvalidDecision(`${where}: timers[${i}] needs after, at or every`);
      }
      const out: WireTimer = { name: t.name as string, command: t.command ?? null };
      for (const k of ["after", "at", "every"] as const) if (t[k] !== undefined) out[k] = t[k];
      if (t.catchUp !== undefined) out.catchUp = t.catchUp;
      return out;
    });
    cancel.forEach((name, i) => {
      if (typeof name !== "string" || !TIMER_NAME.test(name)) {
        throw new InvalidDecision(`${where}: cancel[${i}] ${JSON.stringify(name)} is no timer name`);
      }
    });
    const next = this.fold(state, events);
    checkDepth(next, `${where}: state`);
    const out: Decided<S> = { events, state: next };
    const reply = d.reply !== undefined ? d.reply : this.replyFn ? this.replyFn(next) : undefined;
    if (reply !== undefined && reply !== null) {
      checkDepth(reply, `${where}: reply`);
      out.reply = reply;
    }
    if (sends.length) out.send = sends;
    if (wireTimers.length) out.timers = wireTimers;
    if (cancel.length) out.cancel = [...(cancel as string[])];
    return out;
  }
}

/** Values nest at most 32 levels deep (arrays and objects), as the sidecar requires. */
export function checkDepth(value: unknown, where: string, depth = 1): void {
  if (value && typeof value === "object") {
    if (depth > MAX_DEPTH) throw new InvalidDecision(`${where} nests deeper than ${MAX_DEPTH} levels`);
    for (const v of Object.values(value)) checkDepth(v, where, depth + 1);
  }
}
