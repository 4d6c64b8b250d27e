/**
 * The network servers' log: one line per event (import, detach, a peer's error), each naming the peer's
 * address. Two formats: text (a timestamped line, the default) and JSON (one object per line: time,
 * level, message and the event's structured fields — `client`, `busid` — for log collectors). Callers
 * pass the fields as an optional second argument; the text format already has them in the message and
 * ignores them. Tests pass a collecting logger, the CLI may silence info lines.
 *
 * Peer- and device-supplied strings (a usbredir version string, a VMM's filter text, a busid, a serial)
 * must never forge a line or reach a terminal as escape sequences: `peerText` quotes one for a message,
 * and `escapingLogger` (which both servers put in front of whatever logger they are given) escapes
 * every control character of every message and string field — C0, DEL, C1, the Unicode line and paragraph
 * separators and the bidirectional overrides — so whatever a caller forgot cannot split or recolour a
 * line. `PeerWarnings` rate-limits the per-packet warnings of one connection.
 */

import { escapeControls, escapeForTerminal } from "../util/escape.js";

/** Structured fields of one log line: the client's "address:port" and the device's busid where known. */
export interface LogFields {
  readonly client?: string;
  readonly busid?: string;
  readonly [key: string]: string | number | boolean | undefined;
}

export interface FaceLogger {
  info(message: string, fields?: LogFields): void;
  warn(message: string, fields?: LogFields): void;
  error(message: string, fields?: LogFields): void;
}

export type LogFormat = "text" | "json";
export const LOG_FORMATS: readonly LogFormat[] = ["text", "json"];

export { escapeControls, escapeForTerminal, PEER_TEXT_MAX, peerText } from "../util/escape.js";

function escapeFields(fields: LogFields | undefined): LogFields | undefined {
  if (fields === undefined) return undefined;
  let out: Record<string, string | number | boolean | undefined> | null = null;
  for (const [k, v] of Object.entries(fields)) {
    if (typeof v !== "string") continue;
    const safe = escapeControls(v);
    if (safe !== v) {
      out ??= { ...fields };
      out[k] = safe;
    }
  }
  return out ?? fields;
}

/** `base` with every message and string field escaped (escapeControls) before it sees them. */
export function escapingLogger(base: FaceLogger): FaceLogger {
  if ((base as { readonly escaping?: boolean }).escaping === true) return base;
  const wrap =
    (level: "info" | "warn" | "error") =>
    (m: string, f?: LogFields): void =>
      base[level](escapeControls(m), escapeFields(f));
  return { info: wrap("info"), warn: wrap("warn"), error: wrap("error"), escaping: true } as FaceLogger;
}

/** `base` with `prefix` before every message and `fields` added to every line's (a part's own log). */
export function contextLogger(
  base: FaceLogger,
  context: { prefix?: string; fields?: LogFields },
): FaceLogger {
  const prefix = context.prefix ?? "";
  const wrap =
    (level: "info" | "warn" | "error") =>
    (m: string, f?: LogFields): void =>
      base[level](`${prefix}${m}`, context.fields === undefined ? f : { ...f, ...context.fields });
  return { info: wrap("info"), warn: wrap("warn"), error: wrap("error") };
}

function stamp(level: string, message: string): string {
  return `${new Date().toISOString()} usbvirt ${level}: ${escapeControls(message)}\n`;
}

/** One JSON object per line; the fixed keys come first and cannot be overridden by fields. */
export function jsonLine(level: string, message: string, fields?: LogFields, time = new Date()): string {
  const extra: Record<string, string | number | boolean> = {};
  if (fields !== undefined) {
    for (const [k, v] of Object.entries(fields)) {
      if (v !== undefined && k !== "time" && k !== "level" && k !== "message") extra[k] = v;
    }
  }
  // JSON.stringify escapes C0 controls; the separators and C1 are escaped too so no reader splits the line.
  return `${escapeForTerminal(JSON.stringify({ time: time.toISOString(), level, message, ...extra }))}\n`;
}

/** A logger writing `format` lines to `write` (stderr by default). */
export function streamLogger(
  format: LogFormat,
  write: (line: string) => void = (l) => process.stderr.write(l),
): FaceLogger {
  const line =
    format === "json"
      ? (level: string) => (m: string, f?: LogFields) => write(jsonLine(level, m, f))
      : (level: string) => (m: string) => write(stamp(level, m));
  return { info: line("info"), warn: line("warn"), error: line("error") };
}

export const stderrLogger: FaceLogger = streamLogger("text");

export const silentLogger: FaceLogger = { info: () => {}, warn: () => {}, error: () => {} };

/** How many warnings one connection may log per interval before the rest are only counted. */
export interface WarningRate {
  readonly burst: number;
  readonly intervalMs: number;
}
export const DEFAULT_WARNING_RATE: WarningRate = { burst: 5, intervalMs: 10_000 };

/**
 * One connection's per-packet warnings (a refused packet, an unsupported request): at most `burst` per
 * interval are logged; the others are counted and said in one line when the next interval starts or the
 * connection ends (`flush`). No timer: the clock is read when a warning comes.
 */
export class PeerWarnings {
  private windowStart = 0;
  private inWindow = 0;
  private suppressed = 0;

  constructor(
    private readonly log: FaceLogger,
    private readonly fields: () => LogFields,
    private readonly rate: WarningRate = DEFAULT_WARNING_RATE,
    private readonly now: () => number = Date.now,
  ) {}

  warn(message: string): void {
    const t = this.now();
    if (t - this.windowStart >= this.rate.intervalMs) {
      this.flush();
      this.windowStart = t;
      this.inWindow = 0;
    }
    if (this.inWindow < this.rate.burst) {
      this.inWindow++;
      this.log.warn(message, this.fields());
    } else this.suppressed++;
  }

  /** Say how many warnings were not logged, if any. */
  flush(): void {
    if (this.suppressed === 0) return;
    const n = this.suppressed;
    this.suppressed = 0;
    this.log.warn(
      `${this.fields().client ?? "peer"}: ${n} more warnings not logged (at most ${this.rate.burst} per ${this.rate.intervalMs} ms)`,
      this.fields(),
    );
  }
}

/** A logger that keeps every line (for tests): `lines` holds "level: message", `records` the fields too. */
export class CollectingLogger implements FaceLogger {
  readonly lines: string[] = [];
  readonly records: { level: string; message: string; fields: LogFields | undefined }[] = [];
  private keep(level: string, m: string, fields: LogFields | undefined): void {
    this.lines.push(`${level}: ${m}`);
    this.records.push({ level, message: m, fields });
  }
  info(m: string, fields?: LogFields): void {
    this.keep("info", m, fields);
  }
  warn(m: string, fields?: LogFields): void {
    this.keep("warn", m, fields);
  }
  error(m: string, fields?: LogFields): void {
    this.keep("error", m, fields);
  }
  /** Lines containing `text`. */
  matching(text: string): string[] {
    return this.lines.filter((l) => l.includes(text));
  }
}
