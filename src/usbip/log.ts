/**
 * The USB/IP transport's log: one line per event (import, detach, client
 * error), each naming the client's address. The default writes to stderr;
 * tests pass a collecting logger, the CLI may silence info lines.
 */
export interface UsbipLogger {
  info(message: string): void;
  warn(message: string): void;
  error(message: string): void;
}

function stamp(level: string, message: string): string {
  return `${new Date().toISOString()} usbvirt ${level}: ${message}\n`;
}

export const stderrLogger: UsbipLogger = {
  info: (m) => process.stderr.write(stamp("info", m)),
  warn: (m) => process.stderr.write(stamp("warn", m)),
  error: (m) => process.stderr.write(stamp("error", m)),
};

export const silentLogger: UsbipLogger = { info: () => {}, warn: () => {}, error: () => {} };

/** A logger that keeps every line (for tests): `lines` holds "level: message". */
export class CollectingLogger implements UsbipLogger {
  readonly lines: string[] = [];
  info(m: string): void {
    this.lines.push(`info: ${m}`);
  }
  warn(m: string): void {
    this.lines.push(`warn: ${m}`);
  }
  error(m: string): void {
    this.lines.push(`error: ${m}`);
  }
  /** Lines containing `text`. */
  matching(text: string): string[] {
    return this.lines.filter((l) => l.includes(text));
  }
}
