/**
 * Guest memory, grant table and grant mapper (the Xen grant-table analogue):
 * see ./grant-table.ts for the shared entry layout and protocol.
 */
export * from "./grant-fault.js";
export * from "./grant-mapper.js";
export * from "./grant-table.js";
export * from "./guest-memory.js";
export * from "./types.js";
