/**
 * What the metrics and status endpoint (metrics.ts) accepts from an HTTP client before it answers: its
 * limits (header bytes, a TLS handshake, a header and a request timeout, concurrent connections), and the Host check that
 * keeps a DNS-rebinding page out. Such a page names a host of its own that resolves to this machine, so
 * its requests carry that name: only the names and addresses the endpoint listens on are answered (the
 * bound address; localhost too when that is a loopback address; for a wildcard bind, the machine's
 * interface addresses of that family, its host name and localhost), with or without a port.
 */

import { isIP } from "node:net";
import { hostname, networkInterfaces } from "node:os";

/** The endpoint's limits: a scrape or a status poll is one small GET. */
export const METRICS_LIMITS = {
  /** Request line and headers together (Node answers 431 beyond). */
  maxHeaderBytes: 8 * 1024,
  maxHeadersCount: 64,
  /** The headers must all have arrived this long after the request began. */
  headersTimeoutMs: 5000,
  /** ... and the whole request (a GET has no body). */
  requestTimeoutMs: 10_000,
  /** An idle keep-alive connection is closed after this. */
  keepAliveTimeoutMs: 5000,
  /** Connections open at once; more are closed as they arrive. */
  maxConnections: 16,
  /** With TLS: the handshake and the client certificate's checks must be done this long after connecting. */
  handshakeTimeoutMs: 5000,
  /** How often Node checks the header and request timeouts. */
  checkIntervalMs: 1000,
} as const;

/** The address the endpoint is bound to (its server's address()). */
export interface BoundAddress {
  readonly address: string;
  readonly family: string;
}

/** What a wildcard bind answers to: the machine's addresses and name (os's, unless a test gives them). */
export interface Machine {
  readonly interfaces: Readonly<Record<string, readonly { address: string; family: string }[] | undefined>>;
  readonly hostname: string;
}

function isLoopback(address: string): boolean {
  return address === "::1" || (isIP(address) === 4 && address.startsWith("127."));
}

/** The names the endpoint answers to, lowercase, IPv6 addresses in brackets as Host carries them. */
function namesFor(bound: BoundAddress, machine: () => Machine): Set<string> {
  const literal = (a: string) => (isIP(a) === 6 ? `[${a.toLowerCase()}]` : a.toLowerCase());
  const names = new Set<string>();
  const wildcard = bound.address === "0.0.0.0" || bound.address === "::";
  if (!wildcard) {
    names.add(literal(bound.address));
    if (isLoopback(bound.address)) names.add("localhost");
    return names;
  }
  const m = machine();
  // "::" takes IPv4 too (dual stack); "0.0.0.0" only IPv4.
  const families = bound.address === "::" ? ["IPv4", "IPv6"] : ["IPv4"];
  for (const list of Object.values(m.interfaces)) {
    for (const a of list ?? []) {
      // Link-local addresses need a zone, which Host cannot carry.
      if (families.includes(String(a.family)) && !a.address.includes("%")) names.add(literal(a.address));
    }
  }
  names.add("localhost");
  names.add(m.hostname.toLowerCase());
  return names;
}

const osMachine = (): Machine => ({ interfaces: networkInterfaces(), hostname: hostname() });

/**
 * Whether a request's Host header names the endpoint: one of its names (a trailing dot allowed),
 * optionally followed by a port in 1..65535. A missing or empty Host is refused.
 */
export function hostAllowed(header: string | undefined, bound: BoundAddress, machine?: Machine): boolean {
  if (header === undefined) return false;
  const m = /^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+)(?::(\d{1,5}))?$/.exec(header);
  if (m === null) return false;
  if (m[2] !== undefined) {
    const port = Number(m[2]);
    if (port < 1 || port > 65535) return false;
  }
  let name = m[1]!.toLowerCase();
  if (name.endsWith(".") && !name.startsWith("[")) name = name.slice(0, -1);
  if (name === "") return false;
  return namesFor(bound, () => machine ?? osMachine()).has(name);
}
