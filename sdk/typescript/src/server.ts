// The app protocol, served: GET /v1/kinds, POST /v1/decide, POST /v1/decide-batch, POST /v1/apply
// (docs/PROTOCOL.md, "App protocol") over kept-alive HTTP/1.1 on loopback, for the kinds given.
// node:http only.

import http from "node:http";
import type { AddressInfo } from "node:net";
import { InvalidDecision } from "./kind.js";
import type { DecideAnswer, Json, Kind } from "./kind.js";

/** Decide calls the SDK offers to take in one POST /v1/decide-batch (`decideBatch`). */
export const DECIDE_BATCH = 64;

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

/** What the app's code threw, as the error text of an answer. */
function errorText(e: unknown): string {
  const err = e as { constructor?: { name?: string }; message?: unknown } | null | undefined;
  return `${err?.constructor?.name ?? "Error"}: ${err?.message ?? e}`;
}

/** The kinds of one app container, serving the app protocol. */
export class App {
  private readonly kinds = new Map<string, Kind>();
  private readonly kindsBody: string;
  private server: http.Server | null = null;

  /** `decideBatch`: the most decide calls the sidecar may send in one request (1: one per request;
   * default DECIDE_BATCH). */
  constructor(kinds: Kind[], { decideBatch = DECIDE_BATCH }: { decideBatch?: number } = {}) {
    for (const k of kinds) {
      if (this.kinds.has(k.name)) throw new Error(`kind ${k.name} given twice`);
      this.kinds.set(k.name, k);
    }
    if (!(Number.isInteger(decideBatch) && decideBatch >= 1 && decideBatch <= 1024)) {
      throw new Error(`decideBatch ${decideBatch} is outside 1..1024`);
    }
    const info: { kinds: ReturnType<Kind["info"]>[]; decideBatch?: number } = {
      kinds: [...this.kinds.values()].map((k) => k.info()),
    };
    if (decideBatch > 1) info.decideBatch = decideBatch;
    this.kindsBody = JSON.stringify(info);
  }

  private kind(name: string): Kind {
    const k = this.kinds.get(name);
    if (!k) throw new InvalidDecision(`no kind ${JSON.stringify(name)} here (this app hosts ${[...this.kinds.keys()].join(", ")})`);
    return k;
  }

  /** A decide call's answer, without HTTP. */
  decide(call: DecideCall): DecideAnswer<Json> {
    const k = this.kind(call.kind);
    const ctx = { kind: k.name, id: call.id ?? "", version: call.version ?? 0, commandId: call.commandId ?? null };
    return k.runDecide(call.state, call.command ?? null, ctx);
  }

  /** Each call's answer, in order; a call the app's code fails on answers `{error}` alone. */
  decideBatch(batch: DecideBatch): { answers: (DecideAnswer<Json> | { error: string })[] } {
    const answers = (batch.calls ?? []).map((call) => {
      try {
        return this.decide(call);
      } catch (e) {
        const why = errorText(e);
        process.stderr.write(`aether app: ${why}\n`);
        return { error: why };
      }
    });
    return { answers };
  }

  /** An apply call's answer, without HTTP. */
  apply(call: ApplyCall): { state: Json } {
    const k = this.kind(call.kind);
    const state = call.state === null || call.state === undefined ? structuredClone(k.initial) : call.state;
    return { state: k.fold(state, call.events ?? []) };
  }

  /** Serves on `host:port` (port 0: any); resolves with the URL once listening. */
  listen(port = 8000, host = "127.0.0.1"): Promise<string> {
    const server = http.createServer({ keepAlive: true, noDelay: true }, (req, res) => this.handle(req, res));
    this.server = server;
    return new Promise((resolve, reject) => {
      server.once("error", reject);
      server.listen(port, host, () => resolve(`http://${host}:${(server.address() as AddressInfo).port}`));
    });
  }

  /** Serves with the command line an app container takes: `--listen host:port` or `--port` (and
   * `--host`; env AETHER_APP_PORT, AETHER_APP_HOST; default 127.0.0.1:8000). */
  async main(argv: string[] = process.argv.slice(2)): Promise<void> {
    let host = process.env.AETHER_APP_HOST ?? "127.0.0.1";
    let port = Number(process.env.AETHER_APP_PORT ?? 8000);
    for (let i = 0; i < argv.length; i++) {
      if (argv[i] === "--port") port = Number(argv[++i]);
      else if (argv[i] === "--host") host = argv[++i];
      else if (argv[i] === "--listen") {
        const v = argv[++i];
        const at = v.lastIndexOf(":");
        [host, port] = [v.slice(0, at), Number(v.slice(at + 1))];
      }
    }
    const url = await this.listen(port, host);
    // In a container the app is process 1, and the kernel ignores a signal process 1 has no
    // handler for: without these, a pod's deletion waits out its grace period before a SIGKILL.
    for (const sig of ["SIGTERM", "SIGINT"] as const) {
      process.once(sig, () => this.close().then(() => process.exit(0)));
    }
    process.stderr.write(`aether app (${[...this.kinds.keys()].join(", ")}) on ${url}\n`);
  }

  close(): Promise<void> {
    return new Promise((resolve) => {
      if (!this.server) return resolve();
      this.server.closeAllConnections?.();
      this.server.close(() => resolve());
    });
  }

  private handle(req: http.IncomingMessage, res: http.ServerResponse): void {
    const answer = (status: number, body: unknown): void => {
      const data = Buffer.from(typeof body === "string" ? body : JSON.stringify(body));
      res.writeHead(status, { "Content-Type": "application/json", "Content-Length": data.length });
      res.end(data);
    };
    if (req.method === "GET") {
      return req.url === "/v1/kinds" ? answer(200, this.kindsBody) : answer(404, { error: `no ${req.url}` });
    }
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => {
      try {
        const call = chunks.length ? JSON.parse(Buffer.concat(chunks).toString("utf8")) : {};
        if (req.url === "/v1/decide") return answer(200, this.decide(call));
        if (req.url === "/v1/decide-batch") return answer(200, this.decideBatch(call));
        if (req.url === "/v1/apply") return answer(200, this.apply(call));
        return answer(404, { error: `no ${req.url}` });
      } catch (e) {
        // The app's own mistake: the sidecar answers the caller `appError` and counts it.
        const why = errorText(e);
        process.stderr.write(`aether app: ${why}\n`);
        return answer(500, { error: why });
      }
    });
  }
}
