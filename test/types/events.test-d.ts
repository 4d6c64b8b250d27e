/**
 * Type-level test, never run: `npm run lint` compiles it (tsc -p
 * tsconfig.check.json). Each `@ts-expect-error` line must be a type error —
 * an unknown event name or a listener of the wrong shape — or tsc fails with
 * "Unused '@ts-expect-error' directive". The other lines must type check.
 * Covers the typed event maps of Connection and VirtualHostController, as a
 * user of the package sees them (imports from src/index.ts).
 */
import type {
  BackendLossReason,
  Connection,
  ConnectionEvents,
  ConnectionState,
  PortStatus,
  VirtualHostController,
} from "../../src/index.js";

export function connectionEvents(conn: Connection): void {
  conn.on("state", (s) => {
    const state: ConnectionState = s;
    void state;
  });
  conn.once("port-failed", (port, reason) => {
    const p: number = port;
    const r: string = reason;
    void [p, r];
  });
  const onLog = (line: string): void => void line;
  conn.on("log", onLog).off("log", onLog);
  conn.once("backend-ready", () => undefined);
  conn.emit("backend-lost", "why");
  const events: (keyof ConnectionEvents)[] = ["state", "log", "port-failed", "backend-lost", "backend-ready"];
  void events;

  // @ts-expect-error: no such event
  conn.on("no-such-event", () => undefined);
  // @ts-expect-error: no such event, with once
  conn.once("no-such-event", () => undefined);
  // @ts-expect-error: no such event, with off
  conn.off("no-such-event", () => undefined);
  // @ts-expect-error: a controller event is not a connection event
  conn.on("portChange", (s: PortStatus) => void s);
  // @ts-expect-error: 'log' carries a string
  conn.on("log", (line: number) => void line);
  // @ts-expect-error: 'port-failed' carries (port: number, reason: string)
  conn.once("port-failed", (port: string) => void port);
  // @ts-expect-error: emit checks its arguments too
  conn.emit("state", "Connected");
}

export function controllerEvents(hcd: VirtualHostController): void {
  hcd.on("portChange", (s) => {
    const status: PortStatus = s;
    void status;
  });
  hcd.once("backendLost", (reason) => {
    const r: BackendLossReason = reason;
    void r;
  });
  const onReady = (): void => undefined;
  hcd.once("backendReady", onReady).off("backendReady", onReady);

  // @ts-expect-error: no such event
  hcd.on("no-such-event", () => undefined);
  // @ts-expect-error: no such event, with once
  hcd.once("no-such-event", () => undefined);
  // @ts-expect-error: a connection event is not a controller event
  hcd.once("backend-lost", (why: string) => void why);
  // @ts-expect-error: 'portChange' carries a PortStatus
  hcd.once("portChange", (port: number) => void port);
}
