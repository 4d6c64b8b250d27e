/**
 * `npm run example`: a guest's-eye tour of the engine with the built-in
 * emulated devices. Creates a connection (frontend here, backend and port
 * workers on their own threads), attaches a loopback device, a keyboard and
 * a mass-storage device, enumerates each as a guest driver would
 * (GET_DESCRIPTOR, SET_ADDRESS, SET_CONFIGURATION), then moves data on each
 * and checks it. Exits 0 only if every check passed.
 */
import { Connection } from "../src/engine/connection.js";
import { BulkOnlyClient } from "../src/guest/bulk-only-client.js";
import { type EnumeratedDevice, GuestUsbDriver } from "../src/guest/guest-driver.js";
import type { DevAddr, PortNum } from "../src/urb/types.js";

const failures: string[] = [];
function check(ok: boolean, what: string): void {
  console.log(`  ${ok ? "ok  " : "FAIL"} ${what}`);
  if (!ok) failures.push(what);
}

function describeDevice(d: EnumeratedDevice): string {
  const hex = (n: number) => n.toString(16).padStart(4, "0");
  const eps = d.interfaces.flatMap((i) => i.endpoints.map((e) => `0x${e.address.toString(16)}`)).join(" ");
  return `${hex(d.vendorId)}:${hex(d.productId)} "${d.product}" address ${d.address}, configuration ${d.configurationValue}, endpoints ${eps}`;
}

function bytesOf(length: number, seed: number): Uint8Array {
  const out = new Uint8Array(length);
  for (let i = 0; i < length; i++) out[i] = (i * 31 + seed) & 0xff;
  return out;
}

async function main(): Promise<void> {
  // Until every check has run, an early exit (say, the event loop draining) is a failure.
  process.exitCode = 1;
  const conn = await Connection.create({ ports: 4 });
  conn.on("log", (line: string) => console.error(`connection: ${line}`));
  conn.on("backend-lost", (why: string) => console.error(`connection: backend lost: ${why}`));
  conn.on("port-failed", (port: number, why: string) =>
    console.error(`connection: port ${port} failed: ${why}`),
  );
  const guest = new GuestUsbDriver(conn.frontend!, conn.handles);
  const p = (n: number) => n as PortNum;
  const a = (n: number) => n as DevAddr;
  try {
    console.log("attaching emulated devices: loopback on port 1, keyboard on port 2, storage on port 3");
    await conn.attach(1, { kind: "emulated", name: "loopback" });
    await conn.attach(2, { kind: "emulated", name: "keyboard" });
    await conn.attach(3, { kind: "emulated", name: "storage", options: { sizeBytes: 16 * 1024 * 1024 } });

    console.log("\nloopback (port 1)");
    const loop = await guest.enumerate(p(1), a(1));
    console.log(`  enumerated ${describeDevice(loop)}`);
    const payload = bytesOf(64 * 1024, 7);
    const wrote = await guest.transferOut(p(1), a(1), 1, payload);
    const back = await guest.transferIn(p(1), a(1), 1, payload.length);
    check(
      wrote === payload.length && Buffer.compare(back, payload) === 0,
      `64 KiB bulk OUT then IN came back identical`,
    );

    console.log("\nkeyboard (port 2)");
    const kbd = await guest.enumerate(p(2), a(2));
    console.log(`  enumerated ${describeDevice(kbd)}`);
    const report = guest.transferIn(p(2), a(2), 1, 8, "interrupt");
    await conn.deviceCommand(2, "pressKeys", 0, [0x0b, 0x0c]); // 'h', 'i'
    const r = await report;
    console.log(`  interrupt IN report: ${Buffer.from(r).toString("hex")}`);
    check(r[2] === 0x0b && r[3] === 0x0c, "key press fed through the API arrived as a boot-protocol report");

    console.log("\nmass storage (port 3)");
    const disk = await guest.enumerate(p(3), a(3));
    console.log(`  enumerated ${describeDevice(disk)}`);
    const eps = disk.interfaces[0]!.endpoints;
    const bot = new BulkOnlyClient(
      guest,
      p(3),
      a(3),
      eps.find((e) => (e.address & 0x80) !== 0)!.address & 0x0f,
      eps.find((e) => (e.address & 0x80) === 0)!.address,
    );
    const inquiry = await bot.inquiry();
    const capacity = await bot.readCapacity();
    console.log(
      `  INQUIRY "${inquiry.vendor} ${inquiry.product}", ${capacity.blocks} blocks of ${capacity.blockSize} bytes`,
    );
    const sectors = bytesOf(32 * 512, 3);
    const w = await bot.write10(2048, sectors);
    const rd = await bot.read10(2048, 32);
    check(
      w.status === 0 && rd.status === 0 && Buffer.compare(rd.data, sectors) === 0,
      "32 sectors written at LBA 2048 read back identical",
    );

    const stats = await conn.stats();
    console.log(
      `\nbackend: ${stats.requests} requests, ${stats.responses} responses, ${stats.rejected} rejected`,
    );
  } finally {
    await conn.close();
  }
  if (failures.length > 0) {
    console.error(`\n${failures.length} check(s) failed`);
    process.exitCode = 1;
  } else {
    console.log("\nall checks passed");
    process.exitCode = 0;
  }
}

main().catch((err: unknown) => {
  console.error(err);
  process.exitCode = 1;
});
