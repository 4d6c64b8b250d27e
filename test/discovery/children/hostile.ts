/**
 * Child (inside a test's network namespace): discovery while the link is hostile. A raw UDP socket sends
 * to the mDNS group: packets whose names loop through compression pointers, a TXT record far over the
 * limits, and a flood of FLOOD announcements of distinct instances; meanwhile discover() listens. Prints
 * `VERDICT` with what it found, what it ignored and the heap before and after.
 */
import { createSocket } from "node:dgram";
import dnsPacket from "dns-packet";
import { discover } from "../../../src/discovery/browser.js";
import { encodeTxt } from "../../../src/discovery/txt-record.js";
import { assertInTestNamespace } from "../../support/netns.js";
import { exitWithVerdict } from "../../support/verdict.js";

assertInTestNamespace();
const FLOOD = Number(process.argv[2] ?? "3000");
const sock = createSocket({ type: "udp4", reuseAddr: true });
await new Promise<void>((r) => sock.bind(0, "127.0.0.1", () => r()));
sock.setMulticastInterface("127.0.0.1");
const send = (b: Uint8Array) => new Promise<void>((r) => sock.send(b, 5353, "224.0.0.251", () => r()));

// A response whose one answer's name is a pointer to itself, and one that loops through two pointers.
const header = [0, 0, 0x84, 0, 0, 0, 0, 1, 0, 0, 0, 0];
const selfLoop = Uint8Array.from([...header, 0xc0, 12, 0, 12, 0, 1, 0, 0, 0, 120, 0, 2, 0xc0, 12]);
const twoLoop = Uint8Array.from([...header, 0xc0, 14, 0xc0, 12, 0, 12, 0, 1, 0, 0, 0, 120, 0, 0]);
const fqdn = "huge._usbip._tcp.local";
const oversized = dnsPacket.encode({
  type: "response",
  answers: [
    { type: "PTR", name: "_usbip._tcp.local", ttl: 120, data: fqdn },
    { type: "SRV", name: fqdn, ttl: 120, data: { port: 3240, target: "huge.local" } },
    {
      type: "TXT",
      name: fqdn,
      ttl: 120,
      data: [
        ...encodeTxt({ version: "1", tls: false, devices: [] }),
        ...Array.from({ length: 200 }, (_, i) => `x${i}=${"y".repeat(240)}`),
      ],
    },
  ],
});

const heapBefore = process.memoryUsage().heapUsed;
const listening = discover({ timeoutMs: 4000 });
// Wait for the socket to be bound: the first query goes out at once.
await new Promise((r) => setTimeout(r, 300));
for (let i = 0; i < 20; i++) {
  await send(selfLoop);
  await send(twoLoop);
}
await send(oversized);
for (let i = 0; i < FLOOD; i++) {
  // Every tenth packet, let the listener (this same process) drain its socket: the kernel drops what a
  // full receive buffer cannot hold, and the flood is to reach the cache, not the buffer.
  if (i % 10 === 0) await new Promise((r) => setImmediate(r));
  const name = `flood-${i}._usbip._tcp.local`;
  await send(
    dnsPacket.encode({
      type: "response",
      answers: [
        { type: "PTR", name: "_usbip._tcp.local", ttl: 120, data: name },
        { type: "SRV", name, ttl: 120, data: { port: 3240, target: `f${i}.local` } },
        { type: "TXT", name, ttl: 120, data: encodeTxt({ version: "1", tls: false, devices: [] }) },
      ],
    }),
  );
}
const result = await listening;
sock.close();
globalThis.gc?.();
exitWithVerdict(
  {
    ok: true,
    servers: result.servers.map((s) => s.name),
    ignored: result.ignored,
    heapGrowth: process.memoryUsage().heapUsed - heapBefore,
  },
  0,
);
