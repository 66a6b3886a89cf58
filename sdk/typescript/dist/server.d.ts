import type { DecideAnswer, Json, Kind } from "./kind.js";
/** Decide calls the SDK offers to take in one POST /v1/decide-batch (`decideBatch`). */
export declare const DECIDE_BATCH = 64;
/** A decide call: the actor, its state (null: the kind's initial one) and the command. */
export interface DecideCall {
    kind: string;
    id?: string;
    version?: number;
    state?: Json;
    command?: Json;
    commandId?: string | null;
}
/** An apply call: the events to fold into the actor's state (null: the kind's initial one). */
export interface ApplyCall {
    kind: string;
    id?: string;
    state?: Json;
    events?: Json[];
}
/** `{"calls": [...]}`, answered `{"answers": [...]}`, a failed call as `{"error": why}`. */
export interface DecideBatch {
    calls?: DecideCall[];
}
/** The kinds of one app container, serving the app protocol. */
export declare class App {
    private readonly kinds;
    private readonly kindsBody;
    private server;
    /** `decideBatch`: the most decide calls the sidecar may send in one request (1: one per request;
     * default DECIDE_BATCH). */
    constructor(kinds: Kind[], { decideBatch }?: {
        decideBatch?: number;
    });
    private kind;
    /** A decide call's answer, without HTTP. */
    decide(call: DecideCall): DecideAnswer<Json>;
    /** Each call's answer, in order; a call the app's code fails on answers `{error}` alone. */
    decideBatch(batch: DecideBatch): {
        answers: (DecideAnswer<Json> | {
            error: string;
        })[];
    };
    /** An apply call's answer, without HTTP. */
    apply(call: ApplyCall): {
        state: Json;
    };
    /** Serves on `host:port` (port 0: any); resolves with the URL once listening. */
    listen(port?: number, host?: string): Promise<string>;
    /** Serves with the command line an app container takes: `--listen host:port` or `--port` (and
     * `--host`; env AETHER_APP_PORT, AETHER_APP_HOST; default 127.0.0.1:8000). */
    main(argv?: string[]): Promise<void>;
    close(): Promise<void>;
    private handle;
}
