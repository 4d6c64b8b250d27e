/**
 * The multicast DNS socket announcing and discovering share: multicast-dns (RFC 6762 over UDP 5353,
 * group 224.0.0.251, dns-packet as its codec) behind a small typed face, so no other file imports it.
 *
 * Why multicast-dns: it is the one maintained pure-JS mDNS transport (bonjour-service is a layer over it);
 * dns-packet, its codec, refuses what a hostile peer can send at it: a compression pointer must point
 * backwards (no loop can form), a name stops at 254 bytes, a length past the packet throws, and a packet
 * that does not decode is a 'warning' event, never a crash. bonjour-service would add an unbounded list of
 * every service instance it ever heard, TXT decoding by string splitting and a responder we do not need:
 * we keep our own bounded cache (browser.ts) and our own TXT layout (txt-record.ts).
 */
import makeMdns from "multicast-dns";

/** The DNS-SD service types usbvirt announces. */
export type ServiceType = "_usbip._tcp" | "_usbredir._tcp";
export const SERVICE_TYPES: readonly ServiceType[] = ["_usbip._tcp", "_usbredir._tcp"];

export type MdnsRecord =
  | { readonly type: "PTR"; readonly name: string; readonly ttl: number; readonly data: string }
  | {
      readonly type: "SRV";
      readonly name: string;
      readonly ttl: number;
      readonly data: { readonly port: number; readonly target: string };
    }
  | {
      readonly type: "TXT";
      readonly name: string;
      readonly ttl: number;
      readonly data: readonly Uint8Array[];
    }
  | { readonly type: "A"; readonly name: string; readonly ttl: number; readonly data: string }
  | { readonly type: "OTHER"; readonly name: string; readonly ttl: number };

export interface MdnsQuestion {
  readonly name: string;
  readonly type: string;
}

export interface MdnsSocket {
  onQuery(listener: (questions: readonly MdnsQuestion[]) => void): void;
  onResponse(listener: (records: readonly MdnsRecord[], from: string) => void): void;
  /** A datagram that did not decode (malformed or hostile). */
  onMalformed(listener: (reason: string) => void): void;
  query(questions: readonly MdnsQuestion[]): void;
  respond(answers: readonly MdnsRecord[], additionals?: readonly MdnsRecord[]): Promise<void>;
  close(): Promise<void>;
}

/** At most this many records of one packet are looked at (a packet may claim 65535 of each kind). */
export const MAX_RECORDS_PER_PACKET = 64;

type RawAnswer = { type: string; name: string; ttl?: number; data?: unknown };

function toRecord(a: RawAnswer): MdnsRecord {
  const ttl = typeof a.ttl === "number" ? a.ttl : 0;
  const name = typeof a.name === "string" ? a.name : "";
  const d = a.data;
  if (a.type === "PTR" && typeof d === "string") return { type: "PTR", name, ttl, data: d };
  if (a.type === "A" && typeof d === "string") return { type: "A", name, ttl, data: d };
  if (a.type === "SRV" && typeof d === "object" && d !== null) {
    const s = d as { port?: unknown; target?: unknown };
    if (typeof s.port === "number" && typeof s.target === "string")
      return { type: "SRV", name, ttl, data: { port: s.port, target: s.target } };
  }
  if (a.type === "TXT" && Array.isArray(d) && d.every((x) => x instanceof Uint8Array))
    return { type: "TXT", name, ttl, data: d as Uint8Array[] };
  return { type: "OTHER", name, ttl };
}

function toRaw(r: MdnsRecord): RawAnswer {
  if (r.type === "OTHER") throw new Error("an OTHER record cannot be sent");
  return {
    type: r.type,
    name: r.name,
    ttl: r.ttl,
    data: r.type === "TXT" ? r.data.map((b) => Buffer.from(b)) : r.data,
    ...(r.type === "SRV" || r.type === "TXT" || r.type === "A" ? { flush: true } : {}),
  } as RawAnswer;
}

/**
 * Open the socket (UDP 5353 on every IPv4 interface, or `iface` only); resolves once it is bound. An
 * EADDRINUSE or EACCES rejects; later socket errors go to `onMalformed` as they cannot be acted on.
 */
export async function openMdns(options: { readonly iface?: string } = {}): Promise<MdnsSocket> {
  const mdns = makeMdns({ ...(options.iface !== undefined ? { interface: options.iface } : {}) });
  const malformed: ((reason: string) => void)[] = [];
  mdns.on("warning", (err: Error) => {
    for (const l of malformed) l(err.message);
  });
  await new Promise<void>((resolve, reject) => {
    mdns.once("ready", resolve);
    mdns.once("error", reject);
  });
  mdns.on("error", (err: Error) => {
    for (const l of malformed) l(err.message);
  });
  const records = (list: unknown): MdnsRecord[] =>
    (Array.isArray(list) ? list : []).slice(0, MAX_RECORDS_PER_PACKET).map((a) => toRecord(a as RawAnswer));
  return {
    onQuery(listener) {
      mdns.on("query", (packet) => {
        const qs = (packet.questions ?? []).slice(0, MAX_RECORDS_PER_PACKET);
        listener(qs.map((q) => ({ name: String(q.name), type: String(q.type) })));
      });
    },
    onResponse(listener) {
      mdns.on("response", (packet, rinfo) => {
        const answers = records(packet.answers);
        const extra = records(packet.additionals).slice(0, MAX_RECORDS_PER_PACKET - answers.length);
        listener([...answers, ...extra], rinfo.address);
      });
    },
    onMalformed(listener) {
      malformed.push(listener);
    },
    query(questions) {
      mdns.query({ questions: questions.map((q) => ({ name: q.name, type: q.type as "PTR" })) });
    },
    respond(answers, additionals = []) {
      return new Promise((resolve) => {
        mdns.respond(
          // biome-ignore lint/suspicious/noExplicitAny: dns-packet's answer union is wider than what we send
          { answers: answers.map(toRaw) as any, additionals: additionals.map(toRaw) as any },
          () => resolve(),
        );
      });
    },
    close() {
      return new Promise((resolve) => mdns.destroy(() => resolve()));
    },
  };
}

/** DNS names compare without case (RFC 1035 §2.3.3). */
export function sameName(a: string, b: string): boolean {
  return a.toLowerCase() === b.toLowerCase();
}

/**
 * An instance label: dns-packet splits names on "." and has no escapes, so dots become "-"; cut to the
 * 63 bytes a label holds, on a character boundary.
 */
export function instanceLabel(text: string): string {
  let out = "";
  for (const ch of text.replace(/[.\\]/g, "-")) {
    if (Buffer.byteLength(out + ch) > 63) break;
    out += ch;
  }
  return out === "" ? "usbvirt" : out;
}
