// aether actors in TypeScript or JavaScript: define kinds as decide/apply functions (Kind), serve
// them to the sidecar (App), call actors through the sidecar's app API (Client), and test kinds in
// memory without a sidecar (`@aether/actors/testing`).
// Types of `@aether/actors`: docs/PROTOCOL.md, "App protocol" and "App API".
export { Kind, Rejected, InvalidDecision, checkDepth } from "./kind.js";
export { App, DECIDE_BATCH } from "./server.js";
export { Client, Actor, AetherError } from "./client.js";
