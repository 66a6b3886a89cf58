export { Kind, Rejected, InvalidDecision, checkDepth } from "./kind.js";
export type { Json, Context, Send, Timer, Decision, SendReply, Firing, KindOptions } from "./kind.js";
export { App, DECIDE_BATCH } from "./server.js";
export { Client, Actor, AetherError } from "./client.js";
export type { Reply } from "./client.js";
