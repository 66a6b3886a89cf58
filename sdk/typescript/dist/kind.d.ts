export declare const MAX_EVENTS = 1024;
export declare const MAX_SENDS = 64;
export declare const MAX_TIMERS = 64;
export declare const MAX_DEPTH = 32;
export type Json = null | boolean | number | string | Json[] | {
    [key: string]: Json;
};
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
    ok: {
        version: number;
        state: Json;
        node: string;
        reply?: Json;
    } | null;
    error: {
        code: string;
        message: string;
    } | null;
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
export type ActorRef = {
    kind: string;
    id: string;
};
/** A send as the sidecar takes it. */
export type WireSend = {
    actor: ActorRef;
    command: Json;
};
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
export type DecideAnswer<S> = {
    rejected: string;
} | Decided<S>;
/** Thrown from decide to refuse a command: the caller gets `rejected` with this reason. */
export declare class Rejected extends Error {
}
/** A decision the sidecar would refuse; the message names the kind and the field. */
export declare class InvalidDecision extends Error {
}
/** A kind of actor. */
export declare class Kind<S = any> {
    readonly name: string;
    readonly initial: S;
    readonly snapshotEvery: number;
    private readonly decideFn;
    private readonly applyFn;
    private readonly replyFn;
    private readonly onReplyFn;
    private readonly onTimerFn;
    constructor(name: string, { initial, snapshotEvery, decide, apply, reply, onReply, onTimer }?: KindOptions<S>);
    info(): {
        name: string;
        snapshotEvery: number;
        initial: S;
    };
    fold(state: S, events: Json[]): S;
    /** The answer to a decide call: `{rejected}` or the checked decision with its state. */
    runDecide(state: S | null | undefined, command: Json, ctx: Context): DecideAnswer<S>;
    private dispatch;
    /** The wire answer of decision `d` taken on `state`, checked. */
    private answer;
}
/** Values nest at most 32 levels deep (arrays and objects), as the sidecar requires. */
export declare function checkDepth(value: unknown, where: string, depth?: number): void;
