import http from "node:http";
import type { Json } from "./kind.js";
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
/** An HTTP answer of the app API, as it came. */
export interface RawAnswer {
    status: number;
    headers: http.IncomingHttpHeaders;
    body: Buffer;
}
/** An error answer of the app API. */
export declare class AetherError extends Error {
    readonly code: string;
    readonly status: number;
    readonly retryAfterMs: number | null;
    readonly commandId: string | null;
    readonly reason: string;
    constructor(code: string, message: string, status: number, retryAfterMs?: number | null, commandId?: string | null);
}
/** Calls actors through the sidecar's app API (default http://127.0.0.1:3500). */
export declare class Client {
    private readonly host;
    private readonly port;
    private readonly timeoutMs;
    private readonly agent;
    constructor(url?: string, { timeoutMs }?: {
        timeoutMs?: number;
    });
    actor(kind: string, id: string): Actor;
    close(): void;
    request(method: string, path: string, body?: string | null, headers?: http.OutgoingHttpHeaders): Promise<RawAnswer>;
}
/** One actor, called through the client. */
export declare class Actor {
    private readonly client;
    readonly kind: string;
    readonly id: string;
    private readonly path;
    constructor(client: Client, kind: string, id: string);
    /** Sends a command; with `commandId`, a retry with the same id is applied at most once. */
    call(command: Json, { commandId }?: {
        commandId?: string;
    }): Promise<Reply>;
    /** Reads the actor. */
    get(): Promise<Reply>;
    /** The actor's timers. */
    timers(): Promise<Json[]>;
}
