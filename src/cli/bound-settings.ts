/**
 * The per-peer bounds both network servers take (src/network-face/bounds.ts) as settings of `serve` and
 * `redirect`, spelled once for both: each bound's config key is its option's name (`maxConnections`), its
 * flag the same in kebab-case (`--max-connections`). Values are held to the bounds' own rules
 * (PEER_BOUND_RULES, the ones checkPeerBounds applies), so the CLI refuses what the server would, naming
 * the flag or the key. The names the servers had before are refused, as keys and as flags, naming the new one.
 */
import * as v from "valibot";
import {
  PEER_BOUND_RULES,
  type PeerBoundsOptions,
  peerBoundProblem,
  RENAMED_OPTIONS,
} from "../network-face/bounds.js";
import type { OptionSpec } from "./args.js";

type BoundKey = keyof PeerBoundsOptions;

/** Every bound, in the order bounds.ts gives them. */
export const PEER_BOUND_KEYS = Object.keys(PEER_BOUND_RULES) as readonly BoundKey[];

/** `maxUrbsPerPeer` → `max-urbs-per-peer`. */
export function kebabCase(name: string): string {
  return name.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`);
}

/** Each bound's flag. */
export const PEER_BOUND_FLAGS = Object.fromEntries(PEER_BOUND_KEYS.map((k) => [k, kebabCase(k)])) as {
  readonly [K in BoundKey]: string;
};

/** Old flags (the old names in kebab-case) → the new flag. */
export const RENAMED_BOUND_FLAGS: Readonly<Record<string, string>> = Object.fromEntries(
  Object.entries(RENAMED_OPTIONS).map(([old, now]) => [kebabCase(old), kebabCase(now)]),
);

/** What each bound limits (--help and the JSON Schema's description), and its flag's placeholder. */
const WHAT: { readonly [K in BoundKey]: { readonly value: string; readonly help: string } } = {
  maxUrbsPerPeer: {
    value: "N",
    help: "requests one peer may have in the engine at once; more wait, its reading paused",
  },
  maxUnsentBytes: {
    value: "BYTES",
    help: "replies a peer has not read, every reply counted; past it no request starts and its reading pauses",
  },
  stalledPeerMs: {
    value: "MS",
    help: "a peer over the unsent bound that does not read for this long is dropped",
  },
  blockedRequestMs: {
    value: "MS",
    help: "a request that waits this long for its peer's share while none of its URBs completes is answered with an error",
  },
  handshakeTimeoutMs: {
    value: "MS",
    help: "the handshake's whole time (USB/IP: up to a completed import; usbredir: the peer's hello); 0: no limit",
  },
  requestTimeoutMs: {
    value: "MS",
    help: "a request begun (partly received) and not finished this long ends its connection; 0: no limit",
  },
  maxConnections: {
    value: "N",
    help: "connections held at once, in any phase; more are closed unanswered, logged once per interval",
  },
};

function defaultText(key: BoundKey, maxUrbsDefault: string): string {
  const n = PEER_BOUND_RULES[key].fallback;
  if (n === null) return maxUrbsDefault;
  if (key === "maxUnsentBytes" && n % (1024 * 1024) === 0) return `${n}, ${n / (1024 * 1024)} MiB`;
  return String(n);
}

/** The bounds' flags for a command's --help; `maxUrbsDefault` says the command's default for maxUrbsPerPeer. */
export function peerBoundOptions(maxUrbsDefault: string): OptionSpec[] {
  return PEER_BOUND_KEYS.map((key) => ({
    name: PEER_BOUND_FLAGS[key],
    kind: "string",
    value: WHAT[key].value,
    help: `${WHAT[key].help} (default ${defaultText(key, maxUrbsDefault)})`,
  }));
}

/** The bounds' config keys, each checked by its rule; a message names the rule and the value. */
export function peerBoundFields(maxUrbsDefault: string) {
  const field = (key: BoundKey) => {
    const { least, most } = PEER_BOUND_RULES[key];
    const message = (i: v.BaseIssue<unknown>) =>
      `${peerBoundProblem(key, i.input) ?? "is out of range"}, not ${JSON.stringify(i.input)}`;
    return v.optional(
      v.pipe(
        v.number(message),
        v.integer(message),
        v.minValue(least, message),
        v.maxValue(most, message),
        v.description(`${WHAT[key].help} (default ${defaultText(key, maxUrbsDefault)})`),
      ),
    );
  };
  return Object.fromEntries(PEER_BOUND_KEYS.map((k) => [k, field(k)])) as {
    readonly [K in BoundKey]: ReturnType<typeof field>;
  };
}

/** The bounds a checked config sets, as the servers' options (only those given: the servers apply the defaults). */
export function peerBoundsOf(config: PeerBoundsOptions): PeerBoundsOptions {
  const out: Record<string, number> = {};
  for (const key of PEER_BOUND_KEYS) {
    const value = config[key];
    if (value !== undefined) out[key] = value;
  }
  return out;
}
