// A client of the app API (docs/PROTOCOL.md, "App API"): the app's calls to actors through its
// sidecar on loopback. Every error answer becomes an AetherError with the protocol's code.
import http from "node:http";
/** An error answer of the app API. */
export class AetherError extends Error {
    code;
    status;
    retryAfterMs;
    commandId;
    reason;
    constructor(code, message, status, retryAfterMs = null, commandId = null) {
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
    host;
    port;
    timeoutMs;
    agent;
    constructor(url = "http://127.0.0.1:3500", { timeoutMs = 15_000 } = {}) {
        const u = new URL(url);
        if (u.protocol !== "http:")
            throw new Error(`app API URL ${url}: http://host:port`);
        this.host = u.hostname;
        this.port = Number(u.port || 80);
        this.timeoutMs = timeoutMs;
        this.agent = new http.Agent({ keepAlive: true });
    }
    actor(kind, id) {
        return new Actor(this, kind, id);
    }
    close() {
        this.agent.destroy();
    }
    request(method, path, body = null, headers = {}) {
        return new Promise((resolve, reject) => {
            const req = http.request({ host: this.host, port: this.port, method, path, headers, agent: this.agent, timeout: this.timeoutMs }, (res) => {
                const chunks = [];
                res.on("data", (c) => chunks.push(c));
                res.on("end", () => resolve({ status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks) }));
            });
            req.on("timeout", () => req.destroy(new Error(`no answer within ${this.timeoutMs} ms`)));
            req.on("error", reject);
            if (body)
                req.write(body);
            req.end();
        });
    }
}
/** One actor, called through the client. */
export class Actor {
    client;
    kind;
    id;
    path;
    constructor(client, kind, id) {
        this.client = client;
        this.kind = kind;
        this.id = id;
        this.path = `/v1/actors/${encodeURIComponent(kind)}/${encodeURIComponent(id)}`;
    }
    /** Sends a command; with `commandId`, a retry with the same id is applied at most once. */
    async call(command, { commandId } = {}) {
        const headers = { "Content-Type": "application/json" };
        if (commandId !== undefined)
            headers["Aether-Command-Id"] = commandId;
        return toReply(await this.client.request("POST", this.path, JSON.stringify(command), headers));
    }
    /** Reads the actor. */
    async get() {
        return toReply(await this.client.request("GET", this.path));
    }
    /** The actor's timers. */
    async timers() {
        const r = await this.client.request("GET", `${this.path}/timers`);
        if (r.status !== 200)
            toReply(r);
        return JSON.parse(r.body.toString("utf8")).timers;
    }
}
function toReply(r) {
    const commandId = r.headers["aether-command-id"] ?? null;
    let data;
    try {
        data = JSON.parse(r.body.toString("utf8"));
    }
    catch {
        throw new AetherError("internal", `not JSON (HTTP ${r.status})`, r.status, null, commandId);
    }
    if (r.status === 200) {
        return { version: data.version, state: data.state, node: data.node, reply: data.reply, timers: data.timers ?? [], commandId };
    }
    throw new AetherError(data.code ?? "internal", data.message ?? "", r.status, data.retryAfterMs ?? null, commandId);
}
