/**
 * Soak: mixed traffic on every emulated device for a while, with hotplug and unlinks, checking the data
 * of every transfer, then checking that the engine is back to its baseline: no URB in flight or queued
 * on either side, every grant revoked, the port worker threads it started with, heap near where it was.
 *
 * Port 1 loopback: echoes of random sizes (verified) and IN URBs unlinked while idle (-ECONNRESET, the
 * next echo still verified). Port 2 keyboard: random keys pressed, each report checked, then released.
 * Port 3 storage: random WRITE(10)s against a model of the disk, READ(10)s checked against the model.
 * Port 4 loopback: detached and attached again every second or so while a loop echoes on it (it may see
 * -ENODEV / -ESHUTDOWN in between, never wrong data).
 *
 * `runSoak` is used by the test suite (a bounded run) and by `npm run soak -- --minutes N`.
 */
import { HidRequest } from "../devices/emulated/keyboard.js";
import { Connection } from "../engine/connection.js";
import type { Urb } from "../frontend/types.js";
import { BLOCK_SIZE, BulkOnlyClient } from "../guest/bulk-only-client.js";
import { GuestTransferError, GuestUsbDriver } from "../guest/guest-driver.js";
import { ECONNRESET, ENODEV, ESHUTDOWN } from "../urb/status.js";
import type { DevAddr, EndpointNum, PortNum } from "../urb/types.js";
import { endpointIsIn, endpointNumberOf, RequestTypeByte } from "../usb/index.js";

export interface SoakOptions {
  readonly durationMs: number;
  readonly seed?: number;
  readonly log?: (line: string) => void;
  /** Heap growth allowed between the baseline and the end, bytes (default 48 MiB). */
  readonly heapSlackBytes?: number;
}

export interface SoakReport {
  readonly ok: boolean;
  readonly seed: number;
  readonly durationMs: number;
  readonly counts: Record<string, number>;
  readonly bytesVerified: number;
  readonly failures: string[];
  readonly end: {
    readonly frontendInFlight: number;
    readonly frontendPending: number;
    readonly grantsOut: number;
    readonly backendInFlight: number;
    readonly liveWorkers: number;
    readonly baselineWorkers: number;
    readonly heapBaseline: number;
    readonly heapEnd: number;
  };
}

const p = (n: number) => n as PortNum;
const a = (n: number) => n as DevAddr;

function rng(seed: number): () => number {
  let x = seed >>> 0 || 0x9e3779b9;
  return () => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x / 0x1_0000_0000;
  };
}

function fill(bytes: Uint8Array, seed: number): Uint8Array {
  let x = seed >>> 0 || 1;
  for (let i = 0; i < bytes.length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    bytes[i] = x & 0xff;
  }
  return bytes;
}

function gc(): void {
  (globalThis as { gc?: () => void }).gc?.();
}

async function settleHeap(): Promise<number> {
  for (let i = 0; i < 3; i++) {
    gc();
    await new Promise((r) => setTimeout(r, 20));
  }
  return process.memoryUsage().heapUsed;
}

export async function runSoak(options: SoakOptions): Promise<SoakReport> {
  const seed = options.seed ?? Date.now() >>> 0;
  const log = options.log ?? (() => {});
  const random = rng(seed);
  const int = (lo: number, hi: number) => lo + Math.floor(random() * (hi - lo + 1));
  const counts: Record<string, number> = {};
  const count = (k: string, n = 1) => {
    counts[k] = (counts[k] ?? 0) + n;
  };
  let bytesVerified = 0;
  const failures: string[] = [];
  const fail = (what: string) => {
    if (failures.length < 50) failures.push(what);
    log(`FAIL ${what}`);
  };

  const conn = await Connection.create({ ports: 4, memory: 8192, grantEntries: 4096 });
  const hcd = conn.frontend!;
  const guest = new GuestUsbDriver(hcd, conn.handles);
  try {
    await conn.attach(1, { kind: "emulated", name: "loopback" });
    await conn.attach(2, { kind: "emulated", name: "keyboard" });
    await conn.attach(3, { kind: "emulated", name: "storage", options: { sizeBytes: 4 * 1024 * 1024 } });
    await conn.attach(4, { kind: "emulated", name: "loopback" });
    await guest.enumerate(p(1), a(2));
    await guest.enumerate(p(2), a(3));
    const storage = await guest.enumerate(p(3), a(4));
    await guest.enumerate(p(4), a(5));
    await guest.control(p(2), a(3), {
      bmRequestType: RequestTypeByte.CLASS_INTERFACE_OUT,
      bRequest: HidRequest.SET_IDLE,
      wValue: 0,
      wIndex: 0,
      wLength: 0,
    });
    const eps = storage.interfaces[0]!.endpoints;
    const bulkInEp = endpointNumberOf(eps.find((e) => endpointIsIn(e.address))!.address);
    const bulkOutEp = endpointNumberOf(eps.find((e) => !endpointIsIn(e.address))!.address);
    const bot = new BulkOnlyClient(guest, p(3), a(4), bulkInEp, bulkOutEp);
    const { blocks } = await bot.readCapacity();

    const baselineWorkers = (await conn.stats()).liveWorkers;
    const heapBaseline = await settleHeap();
    log(
      `soak: seed ${seed}, ${options.durationMs} ms, baseline heap ${(heapBaseline / 1048576).toFixed(1)} MiB`,
    );
    const deadline = Date.now() + options.durationMs;
    const running = () => Date.now() < deadline && failures.length === 0;

    const loopback = async () => {
      let n = 0;
      while (running()) {
        n++;
        if (int(0, 9) === 0) {
          // An IN with nothing to echo, unlinked: -ECONNRESET, and the device keeps nothing of it.
          const range = guest.buffers.allocate(512);
          const urb: Urb = {
            type: "bulk",
            port: p(1),
            device: a(2),
            endpoint: 1 as EndpointNum,
            directionIn: true,
            buffer: [range],
          };
          const done = hcd.submit(urb);
          await new Promise((r) => setTimeout(r, int(0, 2)));
          const u = await hcd.unlink(urb);
          const c = await done;
          guest.buffers.release(range);
          if (c.status !== ECONNRESET) fail(`loopback: unlinked idle IN ended ${c.status} (unlink ${u})`);
          count("unlinks");
          continue;
        }
        const length = int(1, 64 * 1024);
        const data = fill(new Uint8Array(length), seed + n);
        await guest.transferOut(p(1), a(2), 1, data);
        const back = await guest.transferIn(p(1), a(2), 1, length);
        if (Buffer.compare(back, data) !== 0)
          fail(`loopback: echo ${n} (${length} bytes) came back different`);
        bytesVerified += length;
        count("loopbackEchoes");
      }
    };

    const keyboard = async () => {
      while (running()) {
        const key = int(0x04, 0x27);
        await conn.deviceCommand(2, "pressKeys", 0, [key]);
        const down = await guest.transferIn(p(2), a(3), 1, 8, "interrupt");
        if (down[2] !== key)
          fail(`keyboard: pressed 0x${key.toString(16)}, report said 0x${down[2]?.toString(16)}`);
        await conn.deviceCommand(2, "releaseAll");
        const up = await guest.transferIn(p(2), a(3), 1, 8, "interrupt");
        if (up.some((b) => b !== 0)) fail("keyboard: release report not all zero");
        count("keyReports", 2);
        await new Promise((r) => setTimeout(r, int(0, 5)));
      }
    };

    const model = new Map<number, Uint8Array>();
    const disk = async () => {
      let n = 0;
      while (running()) {
        n++;
        const count_ = int(1, 64);
        const lba = int(0, blocks - count_);
        if (int(0, 1) === 0) {
          const data = fill(new Uint8Array(count_ * BLOCK_SIZE), seed ^ (n * 7919));
          const w = await bot.write10(lba, data);
          if (w.status !== 0) fail(`storage: WRITE(10) ${lba}+${count_} status ${w.status}`);
          for (let i = 0; i < count_; i++)
            model.set(lba + i, data.slice(i * BLOCK_SIZE, (i + 1) * BLOCK_SIZE));
          count("sectorsWritten", count_);
        } else {
          const rd = await bot.read10(lba, count_);
          if (rd.status !== 0) fail(`storage: READ(10) ${lba}+${count_} status ${rd.status}`);
          for (let i = 0; i < count_; i++) {
            const want = model.get(lba + i);
            const got = rd.data.subarray(i * BLOCK_SIZE, (i + 1) * BLOCK_SIZE);
            if (want !== undefined && Buffer.compare(got, want) !== 0)
              fail(`storage: sector ${lba + i} read back wrong`);
            if (want !== undefined) bytesVerified += BLOCK_SIZE;
          }
          count("sectorsRead", count_);
        }
      }
    };

    let plugged = true;
    const hotplugTraffic = async () => {
      let n = 0;
      while (running()) {
        if (!plugged) {
          await new Promise((r) => setTimeout(r, 5));
          continue;
        }
        n++;
        const data = fill(new Uint8Array(int(1, 8192)), seed + 1_000_000 + n);
        try {
          await guest.transferOut(p(4), a(5), 1, data);
          const back = await guest.transferIn(p(4), a(5), 1, data.length);
          if (Buffer.compare(back, data) !== 0) fail(`hotplug port: echo ${n} came back different`);
          bytesVerified += data.length;
          count("hotplugPortEchoes");
        } catch (err) {
          const status = err instanceof GuestTransferError ? err.status : null;
          if (status !== ENODEV && status !== ESHUTDOWN) fail(`hotplug port: ${String(err)}`);
          count("hotplugPortErrors");
          await new Promise((r) => setTimeout(r, 5));
        }
      }
    };
    const hotplug = async () => {
      while (running()) {
        await new Promise((r) => setTimeout(r, int(300, 1200)));
        if (!running()) break;
        plugged = false;
        await conn.detach(4);
        // Data left in the old device's FIFO is gone with it: the traffic loop starts afresh after re-plug.
        await conn.attach(4, { kind: "emulated", name: "loopback" });
        await guest.enumerate(p(4), a(5));
        plugged = true;
        count("hotplugs");
      }
    };

    const guard = (name: string, f: () => Promise<void>) =>
      f().catch((err: unknown) => fail(`${name}: ${err instanceof Error ? err.stack : String(err)}`));
    const progress = setInterval(() => log(`soak: ${JSON.stringify(counts)}`), 10_000);
    await Promise.all([
      guard("loopback", loopback),
      guard("keyboard", keyboard),
      guard("storage", disk),
      guard("hotplug traffic", hotplugTraffic),
      guard("hotplug", hotplug),
    ]);
    clearInterval(progress);

    // Back to baseline.
    const settleUntil = Date.now() + 5000;
    let s = await conn.stats();
    let fs = hcd.stats();
    while (
      Date.now() < settleUntil &&
      (fs.inFlight !== 0 || fs.pending !== 0 || s.inFlight !== 0 || s.liveWorkers !== baselineWorkers)
    ) {
      await new Promise((r) => setTimeout(r, 20));
      s = await conn.stats();
      fs = hcd.stats();
    }
    model.clear();
    const heapEnd = await settleHeap();
    const end = {
      frontendInFlight: fs.inFlight,
      frontendPending: fs.pending,
      grantsOut: hcd.grants.entries - hcd.grants.freeCount,
      backendInFlight: s.inFlight,
      liveWorkers: s.liveWorkers,
      baselineWorkers,
      heapBaseline,
      heapEnd,
    };
    if (end.frontendInFlight !== 0 || end.frontendPending !== 0)
      fail(`frontend still holds URBs: ${JSON.stringify(fs)}`);
    if (end.grantsOut !== 0) fail(`${end.grantsOut} grants still out`);
    if (end.backendInFlight !== 0) fail(`backend still has ${end.backendInFlight} URBs in flight`);
    if (end.liveWorkers !== baselineWorkers)
      fail(`${end.liveWorkers} port workers alive, ${baselineWorkers} at the start`);
    const slack = options.heapSlackBytes ?? 48 * 1024 * 1024;
    if (heapEnd > heapBaseline + slack) fail(`heap grew from ${heapBaseline} to ${heapEnd} bytes`);
    const report: SoakReport = {
      ok: failures.length === 0,
      seed,
      durationMs: options.durationMs,
      counts,
      bytesVerified,
      failures,
      end,
    };
    log(`soak: ${report.ok ? "ok" : "FAILED"} ${JSON.stringify({ counts, bytesVerified, end })}`);
    return report;
  } finally {
    await conn.close();
  }
}
