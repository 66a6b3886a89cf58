import type { Json, Kind } from "./kind.js";
/** A duration: milliseconds, or text such as "15m", "1h 30m", "500ms". */
export declare function ms(v: number | string): number;
/** A call's answer: `{rejected}` or `{version, state, reply}`. */
export type CallResult = {
    rejected: string;
} | {
    version: number;
    state: Json;
    reply?: Json;
};
/** Kinds in memory: no sidecar, no NATS. */
export declare class Harness {
    private readonly kinds;
    private readonly actors;
    nowMs: number;
    private readonly outbox;
    constructor(kinds: Kind[], { nowMs }?: {
        nowMs?: number;
    });
    private kind;
    private actor;
    state(kind: string, id: string): Json;
    /** Decides `command`: `{rejected}` or `{version, state, reply}`; a repeated commandId gets the first answer. */
    call(kind: string, id: string, command: Json, commandId?: string | null): CallResult;
    /** Delivers pending sends, oldest first, each answer back as a `$reply`; returns how many. */
    run(limit?: number): number;
    /** Moves the clock `ms` on and fires every timer due (periodic ones once, `missed` counting
     * skipped ticks), delivering the sends they cause; returns how many fired. */
    advance(byMs: number): number;
    /** Every actor's events, applied from its kind's initial state, give the state it holds (throws
     * if not). */
    checkReplay(): void;
    private resolve;
}
