/**
 * The network servers' logger on its own (unit): peer strings escaped wherever they go (a message, a
 * field, a text line, a JSON line, a terminal), and one connection's per-packet warnings rate-limited.
 */
import { describe, expect, it } from "vitest";
import {
  CollectingLogger,
  escapeControls,
  escapeForTerminal,
  escapingLogger,
  jsonLine,
  PeerWarnings,
  peerText,
  streamLogger,
} from "../../src/network-face/log.js";

/** A peer's string with every kind of character a terminal or a log reader acts on. */
const HOSTILE =
  "v1\n2030-01-01T00:00:00.000Z usbvirt error: forged\r\x1b]0;owned\x07\x1b[2J\x9b1m\u2028\u202eend";
// biome-ignore lint/suspicious/noControlCharactersInRegex: matching control characters is the point
const UNSAFE = /[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]/;

describe("escaping peer strings", () => {
  it("escapeControls writes every unsafe character as \\xNN or \\uNNNN and leaves ordinary text alone", () => {
    expect(escapeControls('plain text: ünïcode ✓ \\ "quoted"')).toBe('plain text: ünïcode ✓ \\ "quoted"');
    const out = escapeControls(HOSTILE);
    expect(out).not.toMatch(UNSAFE);
    expect(out).toBe(
      "v1\\x0a2030-01-01T00:00:00.000Z usbvirt error: forged\\x0d\\x1b]0;owned\\x07\\x1b[2J\\x9b1m\\u2028\\u202eend",
    );
  });

  it("peerText quotes, escapes quotes and backslashes, and cuts a long string saying its length", () => {
    expect(peerText('a"b\\c')).toBe('"a\\"b\\\\c"');
    expect(peerText(HOSTILE)).not.toMatch(UNSAFE);
    const long = "x".repeat(500);
    expect(peerText(long, 10)).toBe(`"${"x".repeat(10)}"… (500 characters)`);
  });

  it("escapingLogger escapes every message and string field before the logger sees them, once", () => {
    const c = new CollectingLogger();
    const log = escapingLogger(c);
    expect(escapingLogger(log)).toBe(log);
    log.warn(`peer ${HOSTILE}`, { client: HOSTILE, count: 3 });
    expect(c.lines).toHaveLength(1);
    expect(c.lines[0]).not.toMatch(UNSAFE);
    expect(c.records[0]!.fields!.client).not.toMatch(UNSAFE);
    expect(c.records[0]!.fields!.count).toBe(3);
  });

  it("text and JSON lines hold one line each, whatever the message", () => {
    const lines: string[] = [];
    streamLogger("text", (l) => lines.push(l)).error(HOSTILE);
    streamLogger("json", (l) => lines.push(l)).error(HOSTILE, { client: HOSTILE });
    for (const l of lines) {
      expect(l.endsWith("\n")).toBe(true);
      expect(l.slice(0, -1)).not.toMatch(UNSAFE);
    }
    const parsed = JSON.parse(jsonLine("warn", HOSTILE, { client: HOSTILE })) as Record<string, string>;
    expect(parsed.message).toBe(HOSTILE);
    expect(parsed.client).toBe(HOSTILE);
  });

  it("escapeForTerminal keeps line feeds and tabs, escapes the rest as valid JSON escapes", () => {
    const out = escapeForTerminal("a\tb\nc\x1b[2Jd\x9be");
    expect(out).toBe("a\tb\nc\\u001b[2Jd\\u009be");
    expect(JSON.parse(`"${escapeForTerminal("\x1b\x9b")}"`)).toBe("\x1b\x9b");
  });
});

describe("PeerWarnings", () => {
  it("logs at most `burst` warnings per interval, then one line saying how many were not logged", () => {
    const c = new CollectingLogger();
    let now = 1_000_000;
    const w = new PeerWarnings(
      c,
      () => ({ client: "1.2.3.4:5" }),
      { burst: 3, intervalMs: 1000 },
      () => now,
    );
    for (let i = 0; i < 100; i++) w.warn(`refused ${i}`);
    expect(c.lines).toEqual(["warn: refused 0", "warn: refused 1", "warn: refused 2"]);
    now += 1000;
    w.warn("refused again");
    expect(c.lines.slice(3)).toEqual([
      "warn: 1.2.3.4:5: 97 more warnings not logged (at most 3 per 1000 ms)",
      "warn: refused again",
    ]);
    for (let i = 0; i < 5; i++) w.warn("more");
    w.flush();
    expect(c.lines.at(-1)).toBe("warn: 1.2.3.4:5: 3 more warnings not logged (at most 3 per 1000 ms)");
    w.flush();
    expect(c.lines).toHaveLength(8);
  });
});
