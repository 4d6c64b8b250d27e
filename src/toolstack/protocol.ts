/**
 * The control protocol a running `serve` / `redirect` speaks on its control socket (control-server.ts)
 * and `usbvirt ctl` (and a VMM's toolstack) speaks to it: JSON lines, one request per line, one reply
 * line per request, in any order (matched by `id`).
 *
 *   request  {"v":1,"id":7,"verb":"bind","device":"1209:0001"}
 *   reply    {"v":1,"id":7,"ok":true,"result":{...}}
 *            {"v":1,"id":7,"ok":false,"error":{"code":"in-use","message":"keyboard is in use by ..."}}
 *
 * Verbs: list; bind {device}; unbind {device: SEL or bus id}; detach {busid}; assign {device, to:
 * "qemu:HOST:PORT" | "unix:PATH"}; release {device}. Every request is checked whole by one valibot
 * schema (the config's machinery, describeIssues naming the field) before anything acts on it; a line
 * that is not JSON, too long, or of another version gets an error reply. The error codes are stable.
 */
import * as v from "valibot";
import { describeIssues } from "../devices/spec-schema.js";
import { registerErrorClass, UsbvirtError } from "../util/errors.js";

export const CONTROL_VERSION = 1;

/** Bounds of one control connection and of the server (what a hostile local user can make it hold). */
export const CONTROL_LIMITS = {
  /** Bytes of one request line (the longest legitimate one is a few hundred). */
  maxLineBytes: 16 * 1024,
  /** Requests of one connection being answered at once; more get a `busy` reply. */
  maxInFlight: 4,
  /** Connections open at once; more get one `busy` reply and are closed. */
  maxConnections: 16,
  /** Unsent reply bytes of a connection that does not read; past them it is closed. */
  maxUnsentBytes: 1024 * 1024,
} as const;

/** The stable error codes of a reply. */
export type ControlErrorCode =
  | "bad-request" // not JSON, not an object, a field missing or wrong (the message names it)
  | "too-long" // a line over maxLineBytes
  | "bad-version" // v is not CONTROL_VERSION
  | "busy" // too many requests in flight or connections
  | "unknown-device" // the selector or bus id names nothing this host knows
  | "in-use" // the device is held (bound, imported, assigned): the message names the holder
  | "denied" // the host's filter refuses the device (the message names the rule)
  | "no-port" // every port kept for runtime binds is taken
  | "not-supported" // the verb does not apply to this daemon
  | "failed"; // the engine or the server refused (the message says why)

/** A refusal with a stable code: it becomes an error reply. */
export class ControlError extends UsbvirtError {
  declare readonly code: "ERR_USBVIRT_CONTROL";
  readonly reason: ControlErrorCode;
  constructor(reason: ControlErrorCode, message: string, options?: { cause?: unknown }) {
    super("ERR_USBVIRT_CONTROL", message, options);
    this.reason = reason;
  }
}
registerErrorClass(ControlError);

const Selector = v.pipe(
  v.string("must be a device selector string"),
  v.minLength(1, "must not be empty"),
  v.maxLength(256, "is longer than 256 characters"),
);
const BusId = v.pipe(
  v.string("must be a bus id string"),
  v.regex(
    /^\d{1,3}-\d{1,3}(\.\d{1,3}){0,6}$/,
    (i) => `must be a bus id like "1-2", not ${JSON.stringify(i.input)}`,
  ),
);
/** Where a VM's usb-redir chardev listens. */
const Target = v.pipe(
  v.string("must be qemu:HOST:PORT or unix:PATH"),
  v.maxLength(1024, "is longer than 1024 characters"),
  v.check(
    (t) => parseTarget(t) !== null,
    (i) => `must be qemu:HOST:PORT or unix:PATH, not ${JSON.stringify(i.input)}`,
  ),
);
const Id = v.optional(
  v.union(
    [v.pipe(v.number(), v.safeInteger()), v.pipe(v.string(), v.maxLength(64))],
    "must be a number or a short string",
  ),
);
const base = { v: v.literal(CONTROL_VERSION), id: Id };

export const ControlRequestSchema = v.variant(
  "verb",
  [
    v.strictObject({ ...base, verb: v.literal("list") }),
    v.strictObject({ ...base, verb: v.literal("bind"), device: Selector }),
    v.strictObject({ ...base, verb: v.literal("unbind"), device: Selector }),
    v.strictObject({ ...base, verb: v.literal("detach"), busid: BusId }),
    v.strictObject({ ...base, verb: v.literal("assign"), device: Selector, to: Target }),
    v.strictObject({ ...base, verb: v.literal("release"), device: Selector }),
  ],
  (i) => `verb must be one of list, bind, unbind, detach, assign, release, not ${JSON.stringify(i.input)}`,
);
export type ControlRequest = v.InferOutput<typeof ControlRequestSchema>;
export type ControlVerb = ControlRequest["verb"];

/** A VM's chardev: TCP host and port, or a Unix socket path. */
export type AssignTarget =
  | { readonly kind: "tcp"; readonly host: string; readonly port: number }
  | { readonly kind: "unix"; readonly path: string };

export function parseTarget(text: string): AssignTarget | null {
  if (text.startsWith("unix:")) {
    const path = text.slice(5);
    return path.startsWith("/") && !path.includes("\0") ? { kind: "unix", path } : null;
  }
  const m = /^qemu:(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):(\d{1,5})$/.exec(text);
  if (m === null) return null;
  const port = Number(m[2]);
  if (port < 1 || port > 65535) return null;
  return { kind: "tcp", host: m[1]!.replace(/^\[|\]$/g, ""), port };
}

export function formatTarget(t: AssignTarget): string {
  return t.kind === "unix"
    ? `unix:${t.path}`
    : `qemu:${t.host.includes(":") ? `[${t.host}]` : t.host}:${t.port}`;
}

export type ControlReply =
  | { readonly v: number; readonly id: number | string | null; readonly ok: true; readonly result: unknown }
  | {
      readonly v: number;
      readonly id: number | string | null;
      readonly ok: false;
      readonly error: { readonly code: ControlErrorCode; readonly message: string };
    };

/** The outcome of reading one line: a checked request, or the error reply it gets. */
export type ParsedLine = { ok: true; request: ControlRequest } | { ok: false; reply: ControlReply };

function refusal(id: number | string | null, code: ControlErrorCode, message: string): ControlReply {
  return { v: CONTROL_VERSION, id, ok: false, error: { code, message } };
}

export function errorReply(id: number | string | null, err: unknown): ControlReply {
  if (err instanceof ControlError) return refusal(id, err.reason, err.message);
  return refusal(id, "failed", err instanceof Error ? err.message : String(err));
}

export function okReply(id: number | string | null, result: unknown): ControlReply {
  return { v: CONTROL_VERSION, id, ok: true, result };
}

/** The one gate: a line (without its newline) becomes a typed request or an error reply. Never throws. */
export function parseRequestLine(line: string): ParsedLine {
  let value: unknown;
  try {
    value = JSON.parse(line);
  } catch (err) {
    return { ok: false, reply: refusal(null, "bad-request", `not JSON: ${(err as Error).message}`) };
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    return { ok: false, reply: refusal(null, "bad-request", "a request must be a JSON object") };
  }
  const raw = value as Record<string, unknown>;
  const id =
    (typeof raw.id === "number" && Number.isSafeInteger(raw.id)) ||
    (typeof raw.id === "string" && raw.id.length <= 64)
      ? (raw.id as number | string)
      : null;
  if (raw.v !== CONTROL_VERSION) {
    return {
      ok: false,
      reply: refusal(
        id,
        "bad-version",
        `this server speaks control protocol v${CONTROL_VERSION}, not ${JSON.stringify(raw.v) ?? "none"}`,
      ),
    };
  }
  const result = v.safeParse(ControlRequestSchema, value, { abortPipeEarly: true });
  if (!result.success) {
    return { ok: false, reply: refusal(id, "bad-request", describeIssues(result.issues, "request")) };
  }
  return { ok: true, request: result.output };
}

export function tooLongReply(): ControlReply {
  return refusal(null, "too-long", `a request line is at most ${CONTROL_LIMITS.maxLineBytes} bytes`);
}

export function busyReply(id: number | string | null, what: string): ControlReply {
  return refusal(id, "busy", what);
}

/** What `list` says of one device. */
export type DeviceState =
  | "available" // can be bound or assigned
  | "bound" // exported over USB/IP, no importer
  | "imported" // exported and held by a USB/IP client
  | "waiting" // bound by selector, not plugged in
  | "assigned" // given to a VM over usbredir
  | "failed" // its export or assignment failed (why)
  | "in-use" // a host device another connection or process holds (why: the holder)
  | "denied"; // the filter refuses it (rule)

export interface DeviceRow {
  readonly kind: "host" | "emulated";
  /** The selector that names it (a host device's port path, an emulated device's name). */
  readonly device: string;
  readonly description: string;
  readonly state: DeviceState;
  readonly busid?: string;
  /** The importer's address (imported). */
  readonly client?: string;
  /** When the import or assignment began (ISO 8601). */
  readonly since?: string;
  /** The VM's chardev (assigned). */
  readonly vm?: string;
  /** Why it failed, or the filter rule that denies it. */
  readonly why?: string;
}

export interface ListResult {
  readonly devices: readonly DeviceRow[];
  /** Host devices could not be listed (no libusb): why. */
  readonly hostListError?: string;
}
