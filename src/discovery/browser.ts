/**
 * Discovering usbvirt servers: ask multicast DNS for `_usbip._tcp.local` and `_usbredir._tcp.local` (PTR),
 * gather the PTR, SRV, TXT and A records that come back for a while, and return every instance whose SRV
 * and TXT were both heard and whose TXT decodes (txt-record.ts). The query is sent at once and again at a
 * third and two thirds of the wait (RFC 6762 §5.2 asks for repeats, as datagrams get lost).
 *
 * Trust: every record comes from anyone on the link. Per packet at most MAX_RECORDS_PER_PACKET records are
 * read (mdns.ts); at most MAX_INSTANCES instances and MAX_TARGETS host names are kept, each with one SRV,
 * one TXT (checked and bounded on arrival) and at most MAX_ADDRESSES addresses, so a flood of
 * announcements costs bounded memory whatever it sends; what is refused is counted in `ignored`. A goodbye
 * (TTL 0) drops the instance.
 */
import { type MdnsRecord, openMdns, SERVICE_TYPES, type ServiceType, sameName } from "./mdns.js";
import { type DecodedTxt, decodeTxt } from "./txt-record.js";

export const MAX_INSTANCES = 256;
export const MAX_TARGETS = 256;
export const MAX_ADDRESSES = 8;

export interface DiscoveredServer {
  readonly service: ServiceType;
  /** The instance's full name, "HOST NAME._usbip._tcp.local". */
  readonly instance: string;
  /** The label before the service type. */
  readonly name: string;
  /** An IPv4 address to reach it: the address its answer came from when its A records name it, else the first of them, else that address. */
  readonly host: string;
  readonly port: number;
  readonly txt: DecodedTxt;
}

export interface Ignored {
  /** Datagrams that did not decode (bad pointers, lengths past the end, …). */
  malformed: number;
  /** TXT records refused whole (too large, not ours). */
  badTxt: number;
  /** Records dropped because a bound was reached. */
  overLimit: number;
  /** SRV records with an impossible port or target. */
  badSrv: number;
}

export interface DiscoveryResult {
  readonly servers: readonly DiscoveredServer[];
  readonly ignored: Ignored;
}

export interface DiscoverOptions {
  readonly timeoutMs: number;
  readonly services?: readonly ServiceType[];
  /** Use the mDNS socket of this interface address only. */
  readonly iface?: string;
}

interface Partial {
  service: ServiceType;
  srv?: { port: number; target: string };
  txt?: DecodedTxt;
  from: string;
}

const IPV4 = /^(25[0-5]|2[0-4]\d|1?\d?\d)(\.(25[0-5]|2[0-4]\d|1?\d?\d)){3}$/;

/** Gathers what the link says about usbvirt's services; usable on its own for tests (feed()). */
export class ServerCache {
  readonly instances = new Map<string, Partial>();
  readonly targets = new Map<string, string[]>();
  readonly ignored: Ignored = { malformed: 0, badTxt: 0, overLimit: 0, badSrv: 0 };

  constructor(private readonly services: readonly ServiceType[] = SERVICE_TYPES) {}

  private serviceOf(instance: string): ServiceType | undefined {
    const lower = instance.toLowerCase();
    return this.services.find((s) => lower.endsWith(`.${s}.local`));
  }

  private instance(name: string, from: string): Partial | undefined {
    const key = name.toLowerCase();
    const known = this.instances.get(key);
    if (known !== undefined) return known;
    const service = this.serviceOf(name);
    if (service === undefined) return undefined;
    if (this.instances.size >= MAX_INSTANCES) {
      this.ignored.overLimit++;
      return undefined;
    }
    const fresh: Partial = { service, from };
    this.instances.set(key, fresh);
    return fresh;
  }

  /** One packet's records, from the address it came from. */
  feed(records: readonly MdnsRecord[], from: string): void {
    for (const r of records) {
      if (r.type === "PTR") {
        if (!this.services.some((s) => sameName(r.name, `${s}.local`))) continue;
        if (r.ttl === 0) this.instances.delete(r.data.toLowerCase());
        else this.instance(r.data, from);
      } else if (r.type === "SRV") {
        const p = this.instance(r.name, from);
        if (p === undefined) continue;
        const { port, target } = r.data;
        if (
          !(Number.isInteger(port) && port > 0 && port <= 65535) ||
          target.length === 0 ||
          target.length > 254
        ) {
          this.ignored.badSrv++;
          continue;
        }
        p.srv = { port, target: target.toLowerCase() };
        p.from = from;
      } else if (r.type === "TXT") {
        const p = this.instance(r.name, from);
        if (p === undefined) continue;
        const verdict = decodeTxt(r.data);
        if (!verdict.ok) {
          this.ignored.badTxt++;
          continue;
        }
        p.txt = verdict.txt;
      } else if (r.type === "A") {
        if (!IPV4.test(r.data)) continue;
        const key = r.name.toLowerCase();
        let list = this.targets.get(key);
        if (list === undefined) {
          if (this.targets.size >= MAX_TARGETS) {
            this.ignored.overLimit++;
            continue;
          }
          list = [];
          this.targets.set(key, list);
        }
        if (!list.includes(r.data)) {
          if (list.length >= MAX_ADDRESSES) this.ignored.overLimit++;
          else list.push(r.data);
        }
      }
    }
  }

  /** Every instance heard whole, by name. */
  servers(): DiscoveredServer[] {
    const out: DiscoveredServer[] = [];
    for (const [instance, p] of this.instances) {
      if (p.srv === undefined || p.txt === undefined) continue;
      // Two hosts may announce one host name (cloned machines): prefer the address the answer came from.
      const known = this.targets.get(p.srv.target) ?? [];
      const address = known.includes(p.from) ? p.from : (known[0] ?? p.from);
      out.push({
        service: p.service,
        instance,
        name: instance.slice(0, instance.length - `.${p.service}.local`.length),
        host: address,
        port: p.srv.port,
        txt: p.txt,
      });
    }
    return out.sort((a, b) => a.instance.localeCompare(b.instance));
  }
}

/** Ask the link for usbvirt servers and gather answers for `timeoutMs`. */
export async function discover(options: DiscoverOptions): Promise<DiscoveryResult> {
  const services = options.services ?? SERVICE_TYPES;
  const cache = new ServerCache(services);
  const socket = await openMdns(options.iface !== undefined ? { iface: options.iface } : {});
  socket.onResponse((records, from) => cache.feed(records, from));
  socket.onMalformed(() => {
    cache.ignored.malformed++;
  });
  const ask = () => socket.query(services.map((s) => ({ name: `${s}.local`, type: "PTR" })));
  const timers: NodeJS.Timeout[] = [];
  try {
    ask();
    timers.push(setTimeout(ask, options.timeoutMs / 3), setTimeout(ask, (2 * options.timeoutMs) / 3));
    await new Promise((r) => timers.push(setTimeout(r, options.timeoutMs)));
  } finally {
    for (const t of timers) clearTimeout(t);
    await socket.close();
  }
  return { servers: cache.servers(), ignored: { ...cache.ignored } };
}
