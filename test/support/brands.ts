/** Branded numbers for tests: a port and a device address as the engine's types name them. */
import type { DevAddr, PortNum } from "../../src/urb/types.js";

export const port = (n: number) => n as PortNum;
export const addr = (n: number) => n as DevAddr;
