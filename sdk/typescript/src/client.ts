// A client of the app API (docs/PROTOCOL.md, "App API"): the app's calls to actors through its
// sidecar on loopback. Every error answer becomes an AetherError with the protocol's code.

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
export class AetherError extends Error {
  readonly code: string;
  readonly status: number;
  readonly retryAfterMs: number | null;
  readonly commandId: string | null;
  readonly reason: string;

  constructor(code: string, message: string, status: number, retryAfterMs: number | null = null, commandId: string | null = null) {
    super(`${code}: ${message}`);
    this.code = code;
    this.status = status;
    this.retryAfterMs = retryAfterMs;
    this.commandId = commandId;
    this.reason = message;
  }
}

/** Calls actors through the sidecar's app API (default http://127.0.0.1:3500). */
export class Client {
  private readonly host: string;
  private readonly port: number;
  private readonly timeoutMs: number;
  private readonly agent: http.Agent;

  constructor(url = "http://127.0.0.1:3500", { timeoutMs = 15_000 }: { timeoutMs?: number } = {}) {
    const u = new URL(url);
    if (u.protocol !== "http:") throw new Error(`app API URL ${url}: http://host:port`);
    this.host = u.hostname;
    this.port = Number(u.port || 80);
    this.timeoutMs = timeoutMs;
    this.agent = new http.Agent({ keepAlive: true });
  }

  actor(kind: string, id: string): Actor {
    return new Actor(this, kind, id);
  }

  close(): void {
    this.agent.destroy();
  }

  request(method: string, path: string, body: string | null = null, headers: http.OutgoingHttpHeaders = {}): Promise<RawAnswer> {
    return new Promise((resolve, reject) => {
      const req = http.request(
        { host: this.host, port: this.port, method, path, headers, agent: this.agent, timeout: this.timeoutMs },
        (res) => {
          const chunks: Buffer[] = [];
          res.on("data", (c: Buffer) => chunks.push(c));
          res.on("end", () => resolve({ status: res.statusCode!, headers: res.headers, body: Buffer.concat(chunks) }));
        },
      );
      req.on("timeout", () => req.destroy(new Error(`no answer within ${this.timeoutMs} ms`)));
      req.on("error", reject);
      if (body) req.write(body);
      req.end();
    });
  }
}

/** One actor, called through the client. */
export class Actor {
  private readonly client: Client;
  readonly kind: string;
  readonly id: string;
  private readonly path: string;

  constructor(client: Client, kind: string, id: string) {
    this.client = client;
    this.kind = kind;
    this.id = id;
    this.path = `/v1/actors/${encodeURIComponent(kind)}/${encodeURIComponent(id)}`;
  }

  /** Sends a command; with `commandId`, a retry with the same id is applied at most once. */
  async call(command: Json, { commandId }: { commandId?: string } = {}): Promise<Reply> {
    const headers: http.OutgoingHttpHeaders = { "Content-Type": "application/json" };
    if (commandId !== undefined) headers["Aether-Command-Id"] = commandId;
    return toReply(await this.client.request("POST", this.path, JSON.stringify(command), headers));
  }

  /** Reads the actor. */
  async get(): Promise<Reply> {
    return toReply(await this.client.request("GET", this.path));
  }

  /** The actor's timers. */
  async timers(): Promise<Json[]> {
    const r = await this.client.request("GET", `${this.path}/timers`);
    if (r.status !== 200) toReply(r);
    return JSON.parse(r.body.toString("utf8")).timers;
  }
}

/** The body of an app API answer: an actor's, or an error's. */
interface AnswerBody {
  version: number;
  state: Json;
  node: string;
  reply?: Json;
  timers?: Json[];
  code?: string;
  message?: string;
  retryAfterMs?: number | null;
}

function toReply(r: RawAnswer): Reply {
  const commandId = (r.headers["aether-command-id"] as string | undefined) ?? null;
  let data: AnswerBody;
  try {
    data = JSON.parse(r.body.toString("utf8"));
  } catch {
    throw new AetherError("internal", `not JSON (HTTP ${r.status})`, r.status, null, commandId);
  }
  if (r.status === 200) {
    return { version: data.version, state: data.state, node: data.node, reply: data.reply, timers: data.timers ?? [], commandId };
  }
  throw new AetherError(data.code ?? "internal", data.message ?? "", r.status, data.retryAfterMs ?? null, commandId);
}
