/**
 * Shared rings (Xen io/ring.h in SharedArrayBuffers), doorbells, adaptive
 * spinning and the conn ring. See ./layout.ts for the shared layout.
 */
export * from "./back-ring.js";
export * from "./conn-ring.js";
export * from "./doorbell.js";
export * from "./faults.js";
export * from "./front-ring.js";
export * from "./id-pool.js";
export * from "./layout.js";
export * from "./ring-index.js";
export * from "./service-loop.js";
export * from "./spin.js";
