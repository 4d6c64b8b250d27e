/**
 * Announcing one usbvirt server over DNS-SD (RFC 6763) on multicast DNS (RFC 6762): a PTR record
 * `_usbip._tcp.local -> INSTANCE._usbip._tcp.local` (or `_usbredir._tcp`), its SRV (port, target
 * HOST.local), its TXT (txt-record.ts) and the A records of the target. Answers queries for the service
 * type, the instance, the host and `_services._dns-sd._udp.local`; announces unsolicited at start (twice,
 * one second apart, §8.3) and whenever the TXT record changes (refresh()); says goodbye (TTL 0, §10.1)
 * on close. Not done: probing for a name another host already uses (§8.1): two hosts that announce the
 * same instance name both answer under it, so give each host its own name (`--name`).
 */
import { networkInterfaces } from "node:os";
import {
  instanceLabel,
  type MdnsRecord,
  type MdnsSocket,
  openMdns,
  type ServiceType,
  sameName,
} from "./mdns.js";
import { type AnnouncedInfo, encodeTxt, txtBytes } from "./txt-record.js";

/** TTLs RFC 6762 §10 recommends: 120 s for records naming a host, 75 min for the others. */
const HOST_TTL = 120;
const OTHER_TTL = 4500;
const SERVICES_META = "_services._dns-sd._udp.local";

export interface AnnouncerOptions {
  readonly service: ServiceType;
  /** The instance name before sanitising (the host's name, plus --name). */
  readonly instance: string;
  /** The host's name (its first label is used, under .local). */
  readonly hostName: string;
  readonly port: number;
  /** IPv4 addresses to announce for the host; default: every IPv4 address of its interfaces. */
  readonly addresses?: readonly string[];
  /** What the TXT record says now; called at start and on every refresh(). */
  readonly info: () => AnnouncedInfo;
  /** Bind the mDNS socket to this interface address only (default every interface). */
  readonly iface?: string;
}

export interface AnnouncerState {
  readonly service: ServiceType;
  readonly instance: string;
  readonly txtBytes: number;
  readonly devicesShown: number;
  readonly devicesLeftOut: number;
}

/** Every IPv4 address of this machine's interfaces; the loopback ones only when there is nothing else. */
export function hostAddresses(): string[] {
  const all = Object.values(networkInterfaces())
    .flat()
    .filter((a) => a !== undefined && a.family === "IPv4");
  const outside = all.filter((a) => !a!.internal).map((a) => a!.address);
  return outside.length > 0 ? outside : all.map((a) => a!.address);
}

export class Announcer {
  private txt: string[];
  private closed = false;
  private readonly timers = new Set<NodeJS.Timeout>();
  private readonly fqdn: string;
  private readonly serviceName: string;
  private readonly target: string;

  private constructor(
    private readonly socket: MdnsSocket,
    private readonly options: AnnouncerOptions,
  ) {
    this.serviceName = `${options.service}.local`;
    this.fqdn = `${instanceLabel(options.instance)}.${this.serviceName}`;
    this.target = `${instanceLabel(options.hostName.split(".")[0] ?? "usbvirt")}.local`;
    this.txt = encodeTxt(options.info());
  }

  static async start(options: AnnouncerOptions): Promise<Announcer> {
    const socket = await openMdns(options.iface !== undefined ? { iface: options.iface } : {});
    const a = new Announcer(socket, options);
    socket.onQuery((questions) => a.answer(questions));
    await a.announce();
    a.later(1000, () => a.announce());
    return a;
  }

  get state(): AnnouncerState {
    const shown = this.txt.filter((s) => s.startsWith("d=")).length;
    const more = this.txt.find((s) => s.startsWith("more="));
    return {
      service: this.options.service,
      instance: this.fqdn,
      txtBytes: txtBytes(this.txt),
      devicesShown: shown,
      devicesLeftOut: more !== undefined ? Number(more.slice(5)) : 0,
    };
  }

  /** Read info() again; when the TXT record changed, announce it. */
  refresh(): void {
    if (this.closed) return;
    const next = encodeTxt(this.options.info());
    if (next.length === this.txt.length && next.every((s, i) => s === this.txt[i])) return;
    this.txt = next;
    void this.announce();
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const t of this.timers) clearTimeout(t);
    this.timers.clear();
    await this.socket.respond(this.records(0).answers).catch(() => undefined);
    await this.socket.close();
  }

  private later(ms: number, fn: () => void): void {
    const t = setTimeout(() => {
      this.timers.delete(t);
      if (!this.closed) fn();
    }, ms);
    t.unref();
    this.timers.add(t);
  }

  private records(ttlScale: 0 | 1): { answers: MdnsRecord[]; additionals: MdnsRecord[] } {
    const other = OTHER_TTL * ttlScale;
    const host = HOST_TTL * ttlScale;
    const txt = this.txt.map((s) => Buffer.from(s));
    const addresses = this.options.addresses ?? hostAddresses();
    return {
      answers: [{ type: "PTR", name: this.serviceName, ttl: other, data: this.fqdn }],
      additionals: [
        { type: "SRV", name: this.fqdn, ttl: host, data: { port: this.options.port, target: this.target } },
        { type: "TXT", name: this.fqdn, ttl: other, data: txt },
        ...addresses.map((a): MdnsRecord => ({ type: "A", name: this.target, ttl: host, data: a })),
      ],
    };
  }

  private announce(): Promise<void> {
    if (this.closed) return Promise.resolve();
    const { answers, additionals } = this.records(1);
    return this.socket.respond([...answers, ...additionals]).catch(() => undefined);
  }

  private answer(questions: readonly { name: string; type: string }[]): void {
    if (this.closed) return;
    const { answers, additionals } = this.records(1);
    const all = [...answers, ...additionals];
    const out: MdnsRecord[] = [];
    const any = (t: string, want: string) => t === want || t === "ANY";
    for (const q of questions) {
      if (sameName(q.name, this.serviceName) && any(q.type, "PTR")) {
        void this.socket.respond(answers, additionals).catch(() => undefined);
        return;
      }
      if (sameName(q.name, SERVICES_META) && any(q.type, "PTR")) {
        out.push({ type: "PTR", name: SERVICES_META, ttl: OTHER_TTL, data: this.serviceName });
      }
      if (sameName(q.name, this.fqdn))
        out.push(...all.filter((r) => r.name === this.fqdn && any(q.type, r.type)));
      if (sameName(q.name, this.target))
        out.push(...all.filter((r) => r.name === this.target && any(q.type, r.type)));
    }
    if (out.length > 0) void this.socket.respond(out).catch(() => undefined);
  }
}
