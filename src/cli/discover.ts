/**
 * The client side of discovery: `usbvirt list --discover` (every announcing server and its devices, and
 * where its status page is reached from here: statusAddressOf, which status --discover uses too) and
 * `usbvirt attach --device SEL` (the one free device SEL names among them, followed from host to host).
 *
 * Following: the device is imported without attach's own same-host reconnect; when it is lost (unplugged,
 * server down, link lost) the follower asks the network again and imports it from whichever server
 * announces it free next, on attach's reconnect schedule (0.5 s doubling up to 30 s, with jitter). A
 * selector that matches several free devices is an error that lists them: it never picks one by chance.
 * A host that requires TLS is reached with the client's settings, its announced fingerprint pinned when
 * the client gave no CA (select.ts pick); one that cannot be reached so is waited past, said once.
 */
import { EventEmitter } from "node:events";
import type { FilterRule } from "../devices/host/filter.js";
import { type DiscoveredServer, type DiscoveryResult, discover } from "../discovery/browser.js";
import { type Candidate, describeCandidate, pick } from "../discovery/select.js";
import { escapeControls } from "../network-face/log.js";
import type { TlsClientOptions } from "../tls/tls-settings.js";
import { type AttachedDevice, attachRemote } from "../usbip-attach/attach.js";
import { isLoopbackHost } from "../util/ip-prefix.js";
import { parseMetricsAddress } from "./metrics.js";

/** A discovered server's status page as reached from here (`tls`: HTTPS with mutual TLS, stls=1). */
export interface StatusAt {
  readonly host: string;
  readonly port: number;
  readonly tls: boolean;
}

/**
 * Where a server's announced status address is reached from here: an unspecified host (0.0.0.0, ::) is
 * the server's own address; a loopback one is reachable only from the server's machine (here only when
 * the server was found on loopback itself), else the reason it is not.
 */
export function statusAddressOf(
  server: DiscoveredServer,
): StatusAt | { readonly unreachable: string } | null {
  const announced = server.txt.status;
  if (announced === undefined) return null;
  const at = parseMetricsAddress(announced, false);
  if ("path" in at) return { unreachable: "its status is on a socket file" };
  const tls = server.txt.statusTls === true;
  if (at.host === "0.0.0.0" || at.host === "::") return { host: server.host, port: at.port, tls };
  if (isLoopbackHost(at.host) && !isLoopbackHost(server.host))
    return {
      unreachable: `its status page listens on ${announced}, its own loopback (serve --metrics 0.0.0.0:${at.port} to reach it from here)`,
    };
  return { host: at.host, port: at.port, tls };
}

/** "http://HOST:PORT/", or https:// for a status page with TLS. */
export function statusUrl(at: StatusAt): string {
  return `http${at.tls ? "s" : ""}://${at.host.includes(":") ? `[${at.host}]` : at.host}:${at.port}/`;
}

/** How long a look at the network listens unless told (list --discover, attach --device, status --discover). */
export const DEFAULT_DISCOVER_S = 2;

/** Where a server's status page is, as the table says it: reached from here, or why it is not. */
function statusText(server: DiscoveredServer): string {
  let at: ReturnType<typeof statusAddressOf>;
  try {
    at = statusAddressOf(server);
  } catch (err) {
    return `status address unreadable: ${(err as Error).message}`;
  }
  if (at === null) return "";
  if ("unreachable" in at) return `status not reachable from here: ${at.unreachable}`;
  return `status ${statusUrl(at)}${at.tls ? " (mutual TLS)" : ""}`;
}

export function discoveryTable(result: DiscoveryResult): string {
  const lines: string[] = [];
  if (result.servers.length === 0) lines.push("no usbvirt server answered (is one running with --announce?)");
  const h = (n: number, w: number) => n.toString(16).padStart(w, "0");
  for (const s of result.servers) {
    const kind = s.service === "_usbip._tcp" ? "USB/IP" : "usbredir";
    const extras = [
      `usbvirt ${s.txt.version}`,
      s.txt.tls
        ? `TLS required${s.txt.fingerprint !== undefined ? ` (sha256 ${s.txt.fingerprint})` : ""}`
        : "no TLS",
      ...(s.txt.status !== undefined ? [statusText(s)] : []),
    ];
    // Names and serials come from anyone on the link: their control characters are shown escaped.
    lines.push(`${escapeControls(s.name)}  ${kind} ${s.host}:${s.port}  ${extras.join(", ")}`);
    if (s.txt.devices.length === 0) lines.push("  (no devices)");
    for (const d of s.txt.devices) {
      lines.push(
        `  ${d.busid.padEnd(8)} ${h(d.vendorId, 4)}:${h(d.productId, 4)}  class ${h(d.deviceClass, 2)}  ${(d.held ? "held" : "free").padEnd(4)}${d.serial !== undefined ? `  serial=${escapeControls(d.serial)}` : ""}`,
      );
    }
    if (s.txt.more > 0)
      lines.push(
        `  … ${s.txt.more} more (not in the announcement): usbvirt list --remote ${s.host}:${s.port}`,
      );
  }
  const ig = result.ignored;
  const bad = ig.malformed + ig.badTxt + ig.badSrv + ig.overLimit;
  if (bad > 0)
    lines.push(
      `ignored: ${ig.malformed} malformed packet(s), ${ig.badTxt} bad TXT record(s), ${ig.badSrv} bad SRV record(s), ${ig.overLimit} record(s) over the limits`,
    );
  return `${lines.join("\n")}\n`;
}

export interface FollowOptions {
  readonly selector: string;
  readonly rule: FilterRule;
  /** How long each discovery listens. */
  readonly discoverMs: number;
  readonly timeoutMs: number;
  readonly keepaliveMs: number;
  /** false: give up at the first loss (or when nothing matches at the start). */
  readonly follow: boolean;
  readonly retryMinMs?: number;
  readonly retryMaxMs?: number;
  readonly log: (line: string) => void;
  /** The client's TLS settings (a host that requires TLS needs at least its certificate; see tlsFor). */
  readonly tls?: TlsClientOptions;
  /** Replaces multicast discovery (tests). */
  readonly discover?: () => Promise<DiscoveryResult>;
}

export interface FollowEvents {
  attached: [att: AttachedDevice, from: Candidate];
  lost: [reason: string];
}

/** A device attached by what it is, wherever it is announced. `ended` resolves with why it stopped. */
export class DeviceFollower {
  readonly events = new EventEmitter<FollowEvents>();
  current: AttachedDevice | null = null;
  readonly ended: Promise<{ reason: string; error?: Error }>;
  private closed = false;
  private wake: (() => void) | null = null;

  constructor(private readonly o: FollowOptions) {
    this.ended = this.loop();
  }

  private async pause(ms: number): Promise<void> {
    await new Promise<void>((r) => {
      const t = setTimeout(r, ms);
      this.wake = () => {
        clearTimeout(t);
        r();
      };
    });
    this.wake = null;
  }

  private async loop(): Promise<{ reason: string; error?: Error }> {
    const min = this.o.retryMinMs ?? 500;
    const max = this.o.retryMaxMs ?? 30_000;
    let delay = min;
    let said = "";
    const say = (line: string) => {
      if (line !== said) this.o.log(line);
      said = line;
    };
    while (!this.closed) {
      const found = await (
        this.o.discover ?? (() => discover({ timeoutMs: this.o.discoverMs, services: ["_usbip._tcp"] }))
      )();
      if (this.closed) break;
      const p = pick(found.servers, this.o.selector, this.o.rule, this.o.tls);
      if (!p.ok && p.error.code === "ERR_USBVIRT_AMBIGUOUS_DEVICE")
        return { reason: p.error.message, error: p.error };
      if (!p.ok) say(this.o.follow ? `${p.error.message}; waiting` : p.error.message);
      else {
        const c = p.candidate;
        let att: AttachedDevice | null = null;
        try {
          att = await attachRemote({
            host: c.server.host,
            port: c.server.port,
            busid: c.device.busid,
            ...(p.tls !== undefined ? { tls: p.tls } : {}),
            timeoutMs: this.o.timeoutMs,
            keepaliveMs: this.o.keepaliveMs,
            reconnect: false,
            log: (l) => this.o.log(l),
          });
        } catch (err) {
          say(`${describeCandidate(c)}: ${(err as Error).message}`);
        }
        if (att !== null) {
          said = "";
          delay = min;
          this.current = att;
          this.o.log(`attached ${describeCandidate(c)}`);
          this.events.emit("attached", att, c);
          const stop = new Promise<null>((r) => {
            this.wake = () => r(null);
          });
          const reason = await Promise.race([att.lost, stop]);
          this.wake = null;
          this.current = null;
          await att.close();
          if (reason === null) break;
          this.o.log(`lost ${describeCandidate(c)}: ${reason}`);
          this.events.emit("lost", reason);
          if (!this.o.follow) return { reason };
        }
      }
      if (!this.o.follow && this.current === null && said !== "") return { reason: said };
      if (this.closed) break;
      await this.pause(Math.round(delay * (0.5 + Math.random() / 2)));
      delay = Math.min(delay * 2, max);
    }
    return { reason: "closed" };
  }

  async close(): Promise<void> {
    this.closed = true;
    this.wake?.();
    await this.ended;
  }
}
