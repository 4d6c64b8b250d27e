/**
 * The USB/IP transport's log: one line per event (import, detach, client
 * error), each naming the client's address. Two formats: text (a timestamped
 * line, the default) and JSON (one object per line: time, level, message and
 * the event's structured fields — `client`, `busid` — for log collectors).
 * Callers pass the fields as an optional second argument; the text format
 * already has them in the message and ignores them. Tests pass a collecting
 * logger, the CLI may silence info lines.
 */

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

function stamp(level: string, message: string): string {
  return `${new Date().toISOString()} usbvirt ${level}: ${message}\n`;
}

/** One JSON object per line; the fixed keys come first and cannot be overridden by fields. */
export function jsonLine(level: string, message: string, fields?: LogFields, time = new Date()): string {
  const extra: Record<string, string | number | boolean> = {};
  if (fields !== undefined) {
    for (const [k, v] of Object.entries(fields)) {
      if (v !== undefined && k !== "time" && k !== "level" && k !== "message") extra[k] = v;
    }
  }
  return `${JSON.stringify({ time: time.toISOString(), level, message, ...extra })}\n`;
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
