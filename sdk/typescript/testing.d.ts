import type { Json, Kind } from "./index.js";

/** A duration in ms: a number, or text such as "15m", "1h 30m", "500ms". */
export function ms(v: number | string): number;

/** Kinds in memory: no sidecar, no NATS. */
export class Harness {
  constructor(kinds: Kind[], options?: { nowMs?: number });
  nowMs: number;
  state(kind: string, id: string): Json;
  /** Decides a command: `{rejected}` or `{version, state, reply}`; a repeated commandId gets the first answer. */
  call(kind: string, id: string, command: Json, commandId?: string | null): { rejected: string } | { version: number; state: Json; reply?: Json };
  /** Delivers pending sends in order, each answer back as a `$reply`; returns how many. */
  run(limit?: number): number;
  /** Moves the clock on and fires what is due; returns how many fired. */
  advance(ms: number): number;
  /** Every actor's events replayed from its initial state give the state it holds (throws if not). */
  checkReplay(): void;
}
