/**
 * Peer- and device-supplied text made safe for a log line or a terminal: every control character (C0, DEL,
 * C1, the Unicode line and paragraph separators, the bidirectional overrides) escaped, so such a string
 * cannot forge a line or act on a terminal. The network faces' logger (src/network-face/log.ts) and every
 * layer that words a peer's string into a message use these.
 */

/**
 * Characters that must not reach a log line or a terminal as they are: C0 controls (newline, ESC, …),
 * DEL, C1 controls (0x9b is a one-byte CSI), the line and paragraph separators, bidirectional overrides.
 */
// biome-ignore lint/suspicious/noControlCharactersInRegex: matching control characters is the point
const UNSAFE = /[\u0000-\u001f\u007f-\u009f\u2028\u2029\u202a-\u202e\u2066-\u2069]/g;

function escapeChar(c: string): string {
  const code = c.charCodeAt(0);
  return code <= 0xff
    ? `\\x${code.toString(16).padStart(2, "0")}`
    : `\\u${code.toString(16).padStart(4, "0")}`;
}

/** `text` with every unsafe character written as \xNN or \uNNNN (a no-op for ordinary text). */
export function escapeControls(text: string): string {
  UNSAFE.lastIndex = 0;
  return UNSAFE.test(text) ? text.replace(UNSAFE, escapeChar) : text;
}

// biome-ignore lint/suspicious/noControlCharactersInRegex: matching control characters is the point
const UNSAFE_BUT_LINES = /[\u0000-\u0008\u000b-\u001f\u007f-\u009f\u2028\u2029\u202a-\u202e\u2066-\u2069]/g;

/**
 * Text for a terminal (a command's output, which may be JSON): every unsafe character but the line feed
 * and tab written as \uNNNN, which is also a valid escape inside a JSON string.
 */
export function escapeForTerminal(text: string): string {
  UNSAFE_BUT_LINES.lastIndex = 0;
  if (!UNSAFE_BUT_LINES.test(text)) return text;
  return text.replace(UNSAFE_BUT_LINES, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`);
}

/** Longest peer string quoted whole into a message; the rest is cut, with its length said. */
export const PEER_TEXT_MAX = 200;

/**
 * A peer- or device-supplied string, ready for a message: in double quotes, its quotes and backslashes
 * escaped, every unsafe character escaped, at most PEER_TEXT_MAX characters of it.
 */
export function peerText(text: string, max = PEER_TEXT_MAX): string {
  const cut = text.length > max ? text.slice(0, max) : text;
  const body = escapeControls(cut.replace(/\\/g, "\\\\").replace(/"/g, '\\"'));
  return cut.length < text.length ? `"${body}"… (${text.length} characters)` : `"${body}"`;
}
