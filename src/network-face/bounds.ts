/**
 * The one set of per-peer bounds both network servers take (UsbipServerOptions and UsbredirServerOptions
 * extend PeerBoundsOptions), checked in one place with messages that name the option, and their defaults.
 * Names the servers used before are refused with a message naming the new one.
 *
 * What a peer can make a server hold, at most: `maxUnsentBytes` of replies it has not read (every reply
 * counts: answers to data packets, local answers, unlink replies, statuses), plus its device's region of
 * guest memory, plus one read buffer (READ_BUFFER_BYTES) — and for `stalledPeerMs` only, once over the
 * bound without reading. Its requests in the engine are at most `maxUrbsPerPeer`; a request that cannot
 * start for `blockedRequestMs` while none of its URBs completes is answered with an error.
 */

/** The per-peer options both servers take (the same names in config files and CLI flags, kebab-case). */
export interface PeerBoundsOptions {
  /** Requests one peer may have in the engine at once; more wait, reads paused. */
  readonly maxUrbsPerPeer?: number;
  /** A peer whose unsent replies exceed this many bytes has no request started and is not read until it reads (default 16 MiB). */
  readonly maxUnsentBytes?: number;
  /** ... and is dropped if it does not read for this long (default 30 s). */
  readonly stalledPeerMs?: number;
  /** A request that waits this long for its peer's share while none of its URBs completes is answered with an error (default 2000 ms). */
  readonly blockedRequestMs?: number;
  /**
   * The handshake's whole time: USB/IP's management phase up to a completed import (a device list is
   * answered and the connection closed), usbredir's wait for the peer's hello (default 30 s; 0: no limit).
   */
  readonly handshakeTimeoutMs?: number;
  /** A request begun (its header or data partly received) and not finished this long ends the connection, in any phase (default 30 s; 0: no limit). */
  readonly requestTimeoutMs?: number;
  /** Connections the server holds at once, in any phase; more are refused, logged once per interval (default 64). */
  readonly maxConnections?: number;
}

/** The bounds with their defaults applied. */
export interface PeerBounds {
  readonly maxUrbs: number;
  readonly maxUnsent: number;
  readonly stalledMs: number;
  readonly blockedMs: number;
  /** 0: no limit. */
  readonly handshakeMs: number;
  readonly requestMs: number;
  readonly maxConnections: number;
}

export const DEFAULT_MAX_UNSENT_BYTES = 16 * 1024 * 1024;
export const DEFAULT_STALLED_PEER_MS = 30_000;
export const DEFAULT_BLOCKED_REQUEST_MS = 2000;
export const DEFAULT_HANDSHAKE_TIMEOUT_MS = 30_000;
export const DEFAULT_REQUEST_TIMEOUT_MS = 30_000;
export const DEFAULT_MAX_CONNECTIONS = 64;

/** Option names the servers had before, and what each is now. */
export const RENAMED_OPTIONS: Readonly<Record<string, keyof PeerBoundsOptions>> = {
  maxUrbsPerClient: "maxUrbsPerPeer",
  maxUrbsInFlight: "maxUrbsPerPeer",
  maxSendQueueBytes: "maxUnsentBytes",
  stalledClientMs: "stalledPeerMs",
  helloTimeoutMs: "handshakeTimeoutMs",
};

/** The longest delay a Node timer keeps (2^31 - 1 ms); a longer one fires after 1 ms instead. */
export const MAX_TIMER_MS = 2_147_483_647;

/**
 * What each bound may be: an integer from `least` (0 for the timeouts, where 0 means no limit) to `most`,
 * and its default (null: the server's own, maxUrbsPerPeer). checkPeerBounds and the CLI's flags and
 * config keys (src/cli/bound-settings.ts) all read it.
 */
export const PEER_BOUND_RULES: {
  readonly [K in keyof PeerBoundsOptions]-?: {
    readonly least: 0 | 1;
    readonly most: number;
    readonly fallback: number | null;
  };
} = {
  maxUrbsPerPeer: { least: 1, most: Number.MAX_SAFE_INTEGER, fallback: null },
  maxUnsentBytes: { least: 1, most: Number.MAX_SAFE_INTEGER, fallback: DEFAULT_MAX_UNSENT_BYTES },
  stalledPeerMs: { least: 1, most: MAX_TIMER_MS, fallback: DEFAULT_STALLED_PEER_MS },
  blockedRequestMs: { least: 1, most: MAX_TIMER_MS, fallback: DEFAULT_BLOCKED_REQUEST_MS },
  handshakeTimeoutMs: { least: 0, most: MAX_TIMER_MS, fallback: DEFAULT_HANDSHAKE_TIMEOUT_MS },
  requestTimeoutMs: { least: 0, most: MAX_TIMER_MS, fallback: DEFAULT_REQUEST_TIMEOUT_MS },
  maxConnections: { least: 1, most: Number.MAX_SAFE_INTEGER, fallback: DEFAULT_MAX_CONNECTIONS },
};

/** Why `value` cannot be bound `key` ("must be a positive integer"), or null when it can. */
export function peerBoundProblem(key: keyof PeerBoundsOptions, value: unknown): string | null {
  const { least, most } = PEER_BOUND_RULES[key];
  if (typeof value !== "number" || !Number.isInteger(value) || value < least) {
    return least === 1 ? "must be a positive integer" : "must be a non-negative integer (0: no limit)";
  }
  if (value > most) {
    return most === MAX_TIMER_MS
      ? `must be at most ${MAX_TIMER_MS} (the longest timer Node keeps)`
      : `must be at most ${most}`;
  }
  return null;
}

/**
 * Check `options`' bounds (calls `fail` with a message naming the option, which must throw) and apply
 * the defaults; `maxUrbsDefault` is the server's own (its share of the engine's ring slots).
 */
export function checkPeerBounds(
  options: PeerBoundsOptions,
  maxUrbsDefault: number,
  fail: (message: string) => Error,
): PeerBounds {
  for (const [old, now] of Object.entries(RENAMED_OPTIONS)) {
    if (Object.hasOwn(options, old)) throw fail(`options.${old} was renamed ${now}`);
  }
  const bound = (key: keyof PeerBoundsOptions): number => {
    const v = options[key];
    if (v === undefined) return PEER_BOUND_RULES[key].fallback ?? maxUrbsDefault;
    const problem = peerBoundProblem(key, v);
    if (problem !== null) throw fail(`options.${key} ${problem}, got ${v}`);
    return v;
  };
  return {
    maxUrbs: bound("maxUrbsPerPeer"),
    maxUnsent: bound("maxUnsentBytes"),
    stalledMs: bound("stalledPeerMs"),
    blockedMs: bound("blockedRequestMs"),
    handshakeMs: bound("handshakeTimeoutMs"),
    requestMs: bound("requestTimeoutMs"),
    maxConnections: bound("maxConnections"),
  };
}
