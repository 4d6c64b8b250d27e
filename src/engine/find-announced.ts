/**
 * A `usbip` spec that selects its device (UsbipSelectorSpec) made into one that names its server: ask the
 * network for the servers announcing _usbip._tcp (src/discovery), then pick the one free device the
 * selector matches and how to reach it (select.ts pick: TLS as the spec asks, the announced fingerprint
 * pinned when it gives a client certificate and no CA). The Connection does this before each attach of
 * such a spec — the first, a backend restart's, every reconnect attempt — so the port follows its device
 * from server to server. Not picking one is a DeviceSelectionError whose code says why: the first attach
 * fails with it; a reconnect attempt logs it and the reconnector's backoff tries again.
 */
import type { UsbipDeviceSpec, UsbipSelectorSpec } from "../devices/spec.js";
import { type DiscoveryResult, discover } from "../discovery/browser.js";
import { type Candidate, parseDeviceSelector, pick } from "../discovery/select.js";

/** How long a look at the network listens unless the spec says (discoverMs). */
export const DEFAULT_DISCOVER_MS = 2000;

/** Listen for usbip announcements for `timeoutMs` (replaceable in tests). */
export type LookFn = (timeoutMs: number) => Promise<DiscoveryResult>;

const lookOnTheNetwork: LookFn = (timeoutMs) => discover({ timeoutMs, services: ["_usbip._tcp"] });

export async function findAnnounced(
  spec: UsbipSelectorSpec,
  look: LookFn = lookOnTheNetwork,
): Promise<{ readonly spec: UsbipDeviceSpec; readonly candidate: Candidate }> {
  const rule = parseDeviceSelector(spec.select); // a bad selector: InvalidOptionError, before the network
  const found = await look(spec.discoverMs ?? DEFAULT_DISCOVER_MS);
  const p = pick(found.servers, spec.select, rule, spec.tls);
  if (!p.ok) throw p.error;
  const {
    select: _select,
    discoverMs: _discoverMs,
    tls: _tls,
    host: _h,
    port: _p,
    busid: _b,
    ...common
  } = spec;
  return {
    spec: {
      ...common,
      host: p.candidate.server.host,
      port: p.candidate.server.port,
      busid: p.candidate.device.busid,
      ...(p.tls !== undefined ? { tls: p.tls } : {}),
    },
    candidate: p.candidate,
  };
}
