// Types of `@aether/actors` (docs/PROTOCOL.md, "App protocol" and "App API").

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

/** A kind of actor. */
export class Kind<S = any> {
  constructor(name: string, options?: KindOptions<S>);
  readonly name: string;
  readonly initial: S;
  info(): { name: string; snapshotEvery: number; initial: S };
  fold(state: S, events: Json[]): S;
  /** The wire answer to a decide call: `{rejected}` or the checked decision with its state. */
  runDecide(state: S | null, command: Json, ctx: Context): { rejected: string } | { events: Json[]; state: S; reply?: Json; send?: unknown[]; timers?: unknown[]; cancel?: string[] };
}

/** Thrown from decide to refuse a command: the caller gets `rejected` with this reason. */
export class Rejected extends Error {}
/** A decision the sidecar would refuse; the message names the kind and the field. */
export class InvalidDecision extends Error {}
export function checkDepth(value: unknown, where: string, depth?: number): void;

/** Decide calls the SDK offers to take in one POST /v1/decide-batch. */
export const DECIDE_BATCH: number;

/** The kinds of one app container, serving the app protocol. */
export class App {
  /** `decideBatch`: the most decide calls the sidecar may send in one request (1: one per request; default DECIDE_BATCH). */
  constructor(kinds: Kind[], options?: { decideBatch?: number });
  /** Serves on host:port (0: any port); resolves with the URL. */
  listen(port?: number, host?: string): Promise<string>;
  /** Serves with the app container's command line: --listen host:port, --port, --host (env AETHER_APP_PORT/HOST). */
  main(argv?: string[]): Promise<void>;
  close(): Promise<void>;
  decide(call: Json): Json;
  /** `{"calls": [...]}` answered `{"answers": [...]}`, a failed call as `{"error": why}`. */
  decideBatch(batch: Json): Json;
  apply(call: Json): Json;
}

/** An actor's answer. */
export interface Reply {
  version: number;
  state: Json;
  node: string;
  reply?: Json;
  timers: Json[];
  /** The command id used (retry an unknown outcome with it). */
  commandId: string | null;
}

/** An error answer of the app API. */
export class AetherError extends Error {
  readonly code: string;
  readonly reason: string;
  readonly status: number;
  readonly retryAfterMs: number | null;
  readonly commandId: string | null;
}

export class Actor {
  call(command: Json, options?: { commandId?: string }): Promise<Reply>;
  get(): Promise<Reply>;
  timers(): Promise<Json[]>;
}

/** Calls actors through the sidecar's app API (default http://127.0.0.1:3500). */
export class Client {
  constructor(url?: string, options?: { timeoutMs?: number });
  actor(kind: string, id: string): Actor;
  close(): void;
}
