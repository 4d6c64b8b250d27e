/**
 * Fuzz: a hostile frontend against the backend, with a real device behind it.
 *
 * The backend runs in this thread (as in test/backend/hostile-frontend.test.ts) and port 1 has the
 * emulated loopback device, run twice: on a real port worker, and on this thread as the default
 * placement puts it (on the backend's), so fuzzed requests that pass the gate reach a device,
 * pin grants and get IN data written into guest memory. Each fast-check run writes "good" grants,
 * then a random mix of valid-looking URBs (random fields, real and random grant refs with random
 * offsets/lengths, indirect pages, iso descriptor arrays, unlinks), mutated URBs, raw garbage slots,
 * raw writes into the grant table and mid-stream polls; sometimes it ends by corrupting reqProd.
 *
 * Invariants, checked after every run:
 * - poll() never throws and the port worker never errors or exits (the in-thread device never fails);
 * - every request gets exactly one response (ids are unique per request; a pending one is unlinked);
 * - guest memory outside every frame that was ever granted writable (to anyone) is byte-for-byte the
 *   canary (plus what the guest itself wrote: indirect pages, iso descriptors);
 * - no pin outlives its URB (map count 0 on every entry the run did not scribble on), nothing in flight;
 * - an impossible reqProd latches REQUEST_PROD_OVERFLOW on this ring, reported once;
 * - meanwhile an honest Connection in the same process keeps moving verified data.
 *
 * Time-boxed (USBVIRT_FUZZ_MS, default 6000) and seeded (USBVIRT_FUZZ_SEED); fast-check prints the seed
 * and the shrunk counterexample on failure, and the seed is logged at the start.
 */
import fc from "fast-check";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { UsbBackend } from "../../src/backend/backend.js";
import { openInlinePort } from "../../src/backend/inline-port.js";
import type { PortLink } from "../../src/backend/port-link.js";
import { spawnPortWorker, type WorkerPort } from "../../src/backend/worker-port.js";
import {
  type ControllerHandles,
  createControllerHandles,
  URB_RING_GEOMETRY,
} from "../../src/connection/handles.js";
import {
  GRANT_ENTRY_WORDS,
  GTF_PERMIT_ACCESS,
  GTF_READONLY,
  grantStatusWord,
  kFrame,
  kFrameCount,
  kStatus,
  MAP_COUNT_SHIFT,
  mapCountOf,
} from "../../src/dma-map/grant-table.js";
import { GuestMemory } from "../../src/dma-map/guest-memory.js";
import type { DomId, GrantRef } from "../../src/dma-map/types.js";
import { FRAME_SIZE } from "../../src/dma-map/types.js";
import { RingFault } from "../../src/rings/faults.js";
import { FrontRing } from "../../src/rings/front-ring.js";
import { kReqProd } from "../../src/rings/layout.js";
import { decodeResponse, encodeIndirectSegments, encodeRequest } from "../../src/urb/codec.js";
import { parseRequest } from "../../src/urb/parse.js";
import { pipePort } from "../../src/urb/pipe.js";
import {
  type DevAddr,
  Direction,
  type EndpointNum,
  type PortNum,
  type Segment,
  TransferType,
  type UrbBuffer,
  type UrbId,
  type UrbRequest,
} from "../../src/urb/types.js";
import { isPortReset, isSetAddress } from "../../src/usb/index.js";
import { type Bystander, startBystander } from "./bystander.js";
import { fuzzBeside } from "./time-box.js";

const MEMORY_FRAMES = 512;
const GRANT_ENTRIES = 256;
const SLOT = URB_RING_GEOMETRY.slotSize;
const canaryByte = (i: number) => (i * 131 + 0x5a) & 0xff;
const CANARY = new Uint8Array(MEMORY_FRAMES * FRAME_SIZE).map((_, i) => canaryByte(i));

// ------------------------------------------------------------------ the fuzzed connection (in-thread)

interface Fuzzed {
  readonly handles: ControllerHandles;
  backend: UsbBackend;
  readonly front: FrontRing;
  readonly link: PortLink;
  readonly memory: GuestMemory;
  readonly flat: Uint8Array;
  readonly shadow: Uint8Array;
  readonly words: Int32Array;
  readonly workerTrouble: string[];
  readonly faultEvents: number[];
  /** The device address the backend holds for port 1 (SET_ADDRESS is virtualised there). */
  address: number;
  nextId: number;
}

let fz: Fuzzed;

function newBackend(handles: ControllerHandles, faultEvents: number[]): UsbBackend {
  const b = new UsbBackend(handles);
  b.onEvent((e) => {
    if (e.type === "ring-fault") faultEvents.push(e.fault);
  });
  return b;
}

async function makeFuzzed(placement: "worker" | "backend"): Promise<Fuzzed> {
  const handles = createControllerHandles({
    ports: 2,
    memory: MEMORY_FRAMES,
    scratchFrames: 8,
    grantEntries: GRANT_ENTRIES,
  });
  const faultEvents: number[] = [];
  const backend = newBackend(handles, faultEvents);
  const options = {
    port: 1,
    spec: { kind: "emulated", name: "loopback" } as const,
    memory: handles.memory,
    backendBell: handles.backendBell,
  };
  // The device on a port worker of its own, or on this thread (the backend's, here) as by default.
  const link = placement === "worker" ? await spawnPortWorker(options) : await openInlinePort(options);
  const workerTrouble: string[] = [];
  if (placement === "worker") {
    const worker = (link.host as WorkerPort).worker;
    worker.on("error", (err) => workerTrouble.push(`error: ${String(err)}`));
    worker.on("exit", (code) => workerTrouble.push(`exit ${code}`));
  } else {
    link.host.watch({
      gone: (reason) => workerTrouble.push(`gone: ${reason}`),
      failed: (reason) => workerTrouble.push(`failed: ${reason}`),
    });
  }
  backend.attachLink(link);
  const memory = new GuestMemory({ regions: handles.memory });
  const shadow = CANARY.slice();
  return {
    handles,
    backend,
    front: new FrontRing(handles.urbRing, URB_RING_GEOMETRY), // no id pool: the test counts ids itself
    link,
    memory,
    flat: memory.regionView(0),
    shadow,
    words: new Int32Array(handles.grantTable),
    workerTrouble,
    faultEvents,
    address: 0,
    nextId: 1,
  };
}

/** What one run sent and got back. */
interface Ledger {
  readonly sent: Map<number, Uint8Array>;
  readonly answers: Map<number, number[]>;
}

function publish(slotBytes: Uint8Array, ledger: Ledger): number {
  const slot = fz.front.requestSlot();
  if (slot === null) throw new Error("test bug: URB ring full");
  const id = fz.nextId++ >>> 0;
  slot.set(slotBytes);
  slot[0] = id & 0xff;
  slot[1] = (id >>> 8) & 0xff;
  slot[2] = (id >>> 16) & 0xff;
  slot[3] = (id >>> 24) & 0xff;
  ledger.sent.set(id, slot.slice());
  fz.front.commitRequest();
  fz.front.pushRequests();
  return id;
}

const rsp = new Uint8Array(SLOT);
/** Poll the backend once (it must not throw) and take every response, tracking the port's address. */
function pollAndDrain(ledger: Ledger): number {
  fz.backend.poll();
  let n = 0;
  while (fz.front.takeResponse(rsp)) {
    n++;
    const r = decodeResponse(rsp);
    const list = ledger.answers.get(r.id) ?? [];
    list.push(r.status);
    ledger.answers.set(r.id, list);
    const req = ledger.sent.get(r.id);
    if (req !== undefined && r.status === 0) {
      const parsed = parseRequest(req);
      if (parsed.ok && parsed.req.kind === "control" && parsed.req.port === 1) {
        if (isSetAddress(parsed.req.setup)) fz.address = parsed.req.setup.wValue;
        else if (isPortReset(parsed.req.setup)) fz.address = 0;
      }
    }
  }
  return n;
}

const tick = () => new Promise<void>((r) => setTimeout(r, 0));

/** Poll until every sent id is answered, or `idleMs` pass without progress. */
async function settle(ledger: Ledger, idleMs: number): Promise<void> {
  let last = Date.now();
  for (;;) {
    if (pollAndDrain(ledger) > 0) last = Date.now();
    if ([...ledger.sent.keys()].every((id) => ledger.answers.has(id))) return;
    if (Date.now() - last > idleMs) return;
    await tick();
  }
}

/** Honest set-up requests through the fuzzed ring (SET_ADDRESS 2, SET_CONFIGURATION 1). */
async function honestEnumerate(): Promise<void> {
  const ledger: Ledger = { sent: new Map(), answers: new Map() };
  const bytes = new Uint8Array(SLOT);
  const control = (device: number, bRequest: number, wValue: number) => {
    encodeRequest(
      {
        kind: "control",
        id: 0 as UrbId,
        port: 1 as PortNum,
        device: device as DevAddr,
        endpoint: 0 as EndpointNum,
        direction: Direction.Out,
        bufferLength: 0,
        buffer: { kind: "none" },
        shortNotOk: false,
        setup: { bmRequestType: 0, bRequest, wValue, wIndex: 0, wLength: 0 },
      },
      bytes,
    );
    return publish(bytes, ledger);
  };
  const a = control(fz.address, 5, 2);
  await settle(ledger, 2000);
  expect(ledger.answers.get(a)).toEqual([0]);
  const b = control(2, 9, 1);
  await settle(ledger, 2000);
  expect(ledger.answers.get(b)).toEqual([0]);
  fz.address = 2;
}

// ------------------------------------------------------------------ arbitraries

interface GoodGrant {
  readonly frame: number;
  readonly nframes: number;
  readonly readonly: boolean;
  readonly domid: number;
}

const goodGrantArb: fc.Arbitrary<GoodGrant> = fc.record({
  frame: fc.integer({ min: 0, max: MEMORY_FRAMES - 8 }),
  nframes: fc.integer({ min: 1, max: 4 }),
  readonly: fc.boolean(),
  domid: fc.oneof(
    { weight: 9, arbitrary: fc.constant(0) },
    { weight: 1, arbitrary: fc.integer({ min: 1, max: 5 }) },
  ),
});

const u32 = fc.nat({ max: 0xffff_ffff });
const refArb = fc.oneof(
  { weight: 8, arbitrary: fc.integer({ min: 0, max: 11 }) },
  { weight: 1, arbitrary: fc.integer({ min: 0, max: GRANT_ENTRIES + 4 }) },
  { weight: 1, arbitrary: u32 },
);
const segArb = fc.record({
  ref: refArb,
  offset: fc.oneof(
    { weight: 8, arbitrary: fc.integer({ min: 0, max: 2048 }) },
    { weight: 2, arbitrary: fc.integer({ min: 0, max: 4 * FRAME_SIZE }) },
    { weight: 1, arbitrary: u32 },
  ),
  length: fc.oneof(
    { weight: 8, arbitrary: fc.integer({ min: 1, max: 1024 }) },
    { weight: 2, arbitrary: fc.integer({ min: 1, max: 4 * FRAME_SIZE }) },
    { weight: 1, arbitrary: fc.constant(0) },
    { weight: 1, arbitrary: u32 },
  ),
});

const urbArb = fc.record({
  kind: fc.constantFrom("control", "bulk", "bulk", "bulk", "interrupt", "iso", "unlink"),
  port: fc.oneof(
    { weight: 8, arbitrary: fc.constant(1) },
    { weight: 2, arbitrary: fc.integer({ min: 1, max: 31 }) },
  ),
  device: fc.oneof(
    { weight: 8, arbitrary: fc.constant(-1) },
    { weight: 2, arbitrary: fc.integer({ min: 0, max: 127 }) },
  ),
  endpoint: fc.oneof(
    { weight: 6, arbitrary: fc.constantFrom(1, 1, 1, 2, 3) },
    { weight: 1, arbitrary: fc.integer({ min: 0, max: 15 }) },
  ),
  dirIn: fc.boolean(),
  buffer: fc.oneof(
    { weight: 1, arbitrary: fc.constant({ kind: "none" as const }) },
    {
      weight: 6,
      arbitrary: fc.record({
        kind: fc.constant("inline" as const),
        segs: fc.array(segArb, { minLength: 1, maxLength: 8 }),
      }),
    },
    {
      weight: 2,
      arbitrary: fc.record({
        kind: fc.constant("indirect" as const),
        segs: fc.array(segArb, { minLength: 1, maxLength: 24 }),
        page: fc.record({ ref: refArb, offset: fc.integer({ min: 0, max: FRAME_SIZE }) }),
        countDelta: fc.oneof(
          { weight: 9, arbitrary: fc.constant(0) },
          { weight: 1, arbitrary: fc.integer({ min: -3, max: 300 }) },
        ),
      }),
    },
  ),
  lengthFix: fc.oneof(
    { weight: 9, arbitrary: fc.constant(true) },
    { weight: 1, arbitrary: fc.constant(false) },
  ),
  randomLength: u32,
  setup: fc.record({
    bmRequestType: fc.oneof(fc.constantFrom(0x80, 0x00, 0x40, 0xc0, 0x23, 0x02, 0x01), fc.nat({ max: 255 })),
    bRequest: fc.oneof(fc.constantFrom(6, 9, 5, 1, 2, 3, 4, 11), fc.nat({ max: 255 })),
    wValue: fc.oneof(fc.constantFrom(0x100, 0x200, 1, 2, 4, 0), fc.nat({ max: 0xffff })),
    wIndex: fc.oneof(fc.constantFrom(0, 0x81, 0x01, 0x82), fc.nat({ max: 0xffff })),
  }),
  interval: fc.integer({ min: 0, max: 16 }),
  iso: fc.record({
    packets: fc.integer({ min: 1, max: 8 }),
    ref: refArb,
    offset: fc.integer({ min: 0, max: FRAME_SIZE }),
    startFrame: u32,
    asap: fc.boolean(),
    packetBytes: fc.array(
      fc.record({ offset: fc.integer({ min: 0, max: 5000 }), length: fc.integer({ min: 0, max: 1200 }) }),
      {
        minLength: 8,
        maxLength: 8,
      },
    ),
  }),
  flags: fc.record({ shortNotOk: fc.boolean(), zeroPacket: fc.boolean() }),
  unlinkTarget: fc.oneof({ weight: 8, arbitrary: fc.nat({ max: 40 }) }, { weight: 1, arbitrary: u32 }),
});
type UrbSpec = typeof urbArb extends fc.Arbitrary<infer T> ? T : never;

const opArb = fc.oneof(
  { weight: 12, arbitrary: fc.record({ t: fc.constant("urb" as const), urb: urbArb }) },
  {
    weight: 3,
    arbitrary: fc.record({
      t: fc.constant("mutate" as const),
      urb: urbArb,
      at: fc.integer({ min: 4, max: SLOT - 1 }),
      value: fc.nat({ max: 255 }),
    }),
  },
  {
    weight: 2,
    arbitrary: fc.record({
      t: fc.constant("garbage" as const),
      bytes: fc.uint8Array({ minLength: SLOT, maxLength: SLOT }),
    }),
  },
  {
    weight: 2,
    arbitrary: fc.record({
      t: fc.constant("grant" as const),
      ref: fc.oneof(fc.integer({ min: 0, max: 15 }), fc.integer({ min: 0, max: GRANT_ENTRIES - 1 })),
      status: fc.oneof(
        fc
          .record({
            ro: fc.boolean(),
            count: fc.integer({ min: 0, max: 3 }),
            domid: fc.constantFrom(0, 0, 1),
          })
          .map(
            (s) =>
              (s.domid << 16) | GTF_PERMIT_ACCESS | (s.ro ? GTF_READONLY : 0) | (s.count << MAP_COUNT_SHIFT),
          ),
        fc.integer({ min: -0x8000_0000, max: 0x7fff_ffff }),
      ),
      frame: fc.oneof(fc.integer({ min: 0, max: MEMORY_FRAMES + 4 }), u32),
      nframes: fc.oneof(fc.integer({ min: 0, max: 6 }), u32),
    }),
  },
  { weight: 2, arbitrary: fc.constant({ t: "poll" as const }) },
);

const runArb = fc.record({
  grants: fc.array(goodGrantArb, { minLength: 12, maxLength: 12 }),
  ops: fc.array(opArb, { minLength: 1, maxLength: 40 }),
  corrupt: fc.oneof(
    { weight: 9, arbitrary: fc.constant(null) },
    {
      weight: 1,
      arbitrary: fc.integer({
        min: URB_RING_GEOMETRY.slots + 1,
        max: 0xffff_ffff - URB_RING_GEOMETRY.slots - 1,
      }),
    },
  ),
});
type Run = typeof runArb extends fc.Arbitrary<infer T> ? T : never;

// ------------------------------------------------------------------ one run

/** Frames ever granted writable during a run (to any domain): the only ones the device may write. */
class Writable {
  readonly frames = new Uint8Array(MEMORY_FRAMES);
  note(status: number, frame: number, nframes: number): void {
    if ((status & GTF_PERMIT_ACCESS) === 0 || (status & GTF_READONLY) !== 0) return;
    const f = frame >>> 0;
    const n = Math.min(nframes >>> 0, 1024);
    for (let i = f; i < Math.min(f + n, MEMORY_FRAMES); i++) this.frames[i] = 1;
  }
}

function writeEntry(ref: number, status: number, frame: number, nframes: number, writable: Writable): void {
  const base = ref * GRANT_ENTRY_WORDS;
  fz.words[base + kFrame] = frame | 0;
  fz.words[base + kFrameCount] = nframes | 0;
  Atomics.store(fz.words, base + kStatus, status | 0);
  writable.note(status, frame, nframes);
}

/** The guest writes `bytes` at byte `offset` of good grant `ref` (if that is inside it); the shadow follows. */
function guestWrite(grants: readonly GoodGrant[], ref: number, offset: number, bytes: Uint8Array): void {
  const g = grants[ref];
  if (g === undefined || offset + bytes.length > g.nframes * FRAME_SIZE) return;
  const at = g.frame * FRAME_SIZE + offset;
  fz.flat.set(bytes, at);
  fz.shadow.set(bytes, at);
}

function buildUrb(spec: UrbSpec, grants: readonly GoodGrant[], recent: readonly number[]): UrbRequest {
  const common = {
    id: 0 as UrbId,
    port: spec.port as PortNum,
    device: (spec.device < 0 ? fz.address : spec.device) as DevAddr,
    endpoint: (spec.kind === "control" ? 0 : spec.endpoint) as EndpointNum,
    direction: spec.dirIn ? Direction.In : Direction.Out,
  };
  if (spec.kind === "unlink") {
    const target =
      recent.length > 0 && spec.unlinkTarget <= 40
        ? recent[spec.unlinkTarget % recent.length]!
        : spec.unlinkTarget;
    return { kind: "unlink", ...common, targetType: TransferType.Bulk, unlinkId: target as UrbId };
  }
  const segs: Segment[] =
    spec.buffer.kind === "none" ? [] : spec.buffer.segs.map((s) => ({ ...s, ref: s.ref as GrantRef }));
  const sum = segs.reduce((a, s) => a + s.length, 0);
  let bufferLength = spec.lengthFix ? sum : spec.randomLength;
  if (bufferLength > 0xffff_ffff) bufferLength = spec.randomLength;
  let buffer: UrbBuffer;
  if (spec.buffer.kind === "none") buffer = { kind: "none" };
  else if (spec.buffer.kind === "inline") buffer = { kind: "inline", segments: segs };
  else {
    const page = new Uint8Array(segs.length * 12);
    encodeIndirectSegments(segs, page);
    guestWrite(grants, spec.buffer.page.ref, spec.buffer.page.offset, page);
    const count = Math.max(0, Math.min(0xffff, segs.length + spec.buffer.countDelta));
    buffer = {
      kind: "indirect",
      page: { ref: spec.buffer.page.ref as GrantRef, offset: spec.buffer.page.offset, length: count * 12 },
      count,
    };
  }
  const data = { ...common, bufferLength, buffer, shortNotOk: spec.flags.shortNotOk };
  switch (spec.kind) {
    case "control": {
      const bm = spec.lengthFix
        ? (spec.setup.bmRequestType & 0x7f) | (spec.dirIn ? 0x80 : 0)
        : spec.setup.bmRequestType;
      const wLength = spec.lengthFix ? Math.min(bufferLength, 0xffff) : bufferLength & 0xffff;
      return { kind: "control", ...data, setup: { ...spec.setup, bmRequestType: bm, wLength } };
    }
    case "bulk":
      return { kind: "bulk", ...data, zeroPacket: spec.flags.zeroPacket, streamId: 0 };
    case "interrupt":
      return { kind: "interrupt", ...data, zeroPacket: spec.flags.zeroPacket, interval: spec.interval };
    case "iso": {
      const descs = new Uint8Array(spec.iso.packets * 16);
      const v = new DataView(descs.buffer);
      for (let i = 0; i < spec.iso.packets; i++) {
        v.setUint32(i * 16, spec.iso.packetBytes[i]!.offset, true);
        v.setUint32(i * 16 + 4, spec.iso.packetBytes[i]!.length, true);
      }
      guestWrite(grants, spec.iso.ref, spec.iso.offset, descs);
      return {
        kind: "isochronous",
        ...data,
        isoAsap: spec.iso.asap,
        interval: Math.max(0, spec.interval),
        numberOfPackets: spec.iso.packets,
        startFrame: spec.iso.startFrame,
        frameDescriptors: { ref: spec.iso.ref as GrantRef, offset: spec.iso.offset },
      };
    }
  }
}

const stats = { runs: 0, requests: 0, parsed: 0, forwarded: 0, ok: 0, faults: 0, unlinksForPending: 0 };

async function oneRun(run: Run): Promise<void> {
  stats.runs++;
  // Fresh table and canary memory (nothing is in flight between runs).
  fz.words.fill(0);
  fz.shadow.set(CANARY);
  fz.flat.set(CANARY);
  const writable = new Writable();
  const scribbled = new Set<number>();
  for (const [ref, g] of run.grants.entries()) {
    writeEntry(ref, grantStatusWord(g.domid as DomId, g.readonly), g.frame, g.nframes, writable);
  }
  const ledger: Ledger = { sent: new Map(), answers: new Map() };
  const recent: number[] = [];
  const before = fz.backend.snapshot();
  const bytes = new Uint8Array(SLOT);
  for (const op of run.ops) {
    if (op.t === "poll") pollAndDrain(ledger);
    else if (op.t === "grant") {
      scribbled.add(op.ref);
      writeEntry(op.ref, op.status, op.frame, op.nframes, writable);
    } else if (op.t === "garbage") recent.push(publish(op.bytes, ledger));
    else {
      encodeRequest(buildUrb(op.urb, run.grants, recent), bytes);
      if (op.t === "mutate") bytes[op.at] = op.value;
      recent.push(publish(bytes, ledger));
    }
  }
  await settle(ledger, 15);
  // Whatever the device holds (a bulk IN with nothing to echo, an interrupt IN) is unlinked, honestly.
  for (const [id, req] of [...ledger.sent]) {
    if (ledger.answers.has(id)) continue;
    const pipe = (req[4]! | (req[5]! << 8) | (req[6]! << 16) | (req[7]! << 24)) >>> 0;
    encodeRequest(
      {
        kind: "unlink",
        id: 0 as UrbId,
        port: pipePort(pipe) as PortNum,
        device: 0 as DevAddr,
        endpoint: 1 as EndpointNum,
        direction: Direction.In,
        targetType: TransferType.Bulk,
        unlinkId: id as UrbId,
      },
      bytes,
    );
    publish(bytes, ledger);
    stats.unlinksForPending++;
  }
  await settle(ledger, 3000);

  // Exactly one response per request.
  for (const id of ledger.sent.keys()) {
    const got = ledger.answers.get(id);
    if (got?.length !== 1)
      throw new Error(`request ${id} got ${got?.length ?? 0} responses (${JSON.stringify(got)})`);
  }
  for (const id of ledger.answers.keys())
    if (!ledger.sent.has(id)) throw new Error(`response for unknown id ${id}`);
  stats.requests += ledger.sent.size;
  for (const [id, req] of ledger.sent) {
    if (parseRequest(req).ok) stats.parsed++;
    if (ledger.answers.get(id)![0] === 0) stats.ok++;
  }
  const after = fz.backend.snapshot();
  stats.forwarded += (after.ports[1]?.urbs ?? 0) - (before.ports[1]?.urbs ?? 0);
  if (after.inFlight !== 0) throw new Error(`backend has ${after.inFlight} URBs in flight after the run`);
  if (fz.workerTrouble.length > 0) throw new Error(`port worker: ${fz.workerTrouble.join("; ")}`);

  // Nothing written outside frames granted writable.
  for (let frame = 0; frame < MEMORY_FRAMES; frame++) {
    if (writable.frames[frame] === 1) continue;
    const at = frame * FRAME_SIZE;
    for (let i = at; i < at + FRAME_SIZE; i++) {
      if (fz.flat[i] !== fz.shadow[i])
        throw new Error(`guest byte ${i} (frame ${frame}, never granted writable) changed`);
    }
  }
  // No pin left behind on an entry the run did not scribble on.
  for (let ref = 0; ref < GRANT_ENTRIES; ref++) {
    if (scribbled.has(ref)) continue;
    const count = mapCountOf(Atomics.load(fz.words, ref * GRANT_ENTRY_WORDS + kStatus));
    if (count !== 0) throw new Error(`grant ${ref} still has ${count} mappings after every URB completed`);
  }

  if (run.corrupt !== null) await corruptAndRecover(run.corrupt);
}

/** An impossible reqProd latches this ring's fault (reported once); then a fresh backend takes over. */
async function corruptAndRecover(delta: number): Promise<void> {
  stats.faults++;
  const h = new Int32Array(fz.handles.urbRing);
  const pushed = Atomics.load(h, kReqProd);
  Atomics.store(h, kReqProd, (pushed + delta) | 0);
  const events = fz.faultEvents.length;
  fz.backend.poll();
  fz.backend.poll();
  if (fz.backend.ringFault !== RingFault.REQUEST_PROD_OVERFLOW)
    throw new Error(`fault not latched: ${fz.backend.ringFault}`);
  if (fz.faultEvents.length !== events + 1) throw new Error("ring fault not reported exactly once");
  // Recovery as the control plane does it: the old backend lets go of the port, the frontend re-initialises the ring.
  const link = fz.backend.failPort(1, "detached");
  if (link !== fz.link) throw new Error("failPort did not hand the link back");
  fz.front.reset();
  fz.backend = newBackend(fz.handles, fz.faultEvents);
  fz.backend.attachLink(fz.link);
  fz.address = 0;
  await honestEnumerate();
}

// ------------------------------------------------------------------ the honest bystander

let bystander: Bystander;

describe.each(["worker", "backend"] as const)(
  "fuzz: hostile frontend against the backend, device on the %s thread",
  (placement) => {
    beforeAll(async () => {
      for (const k of Object.keys(stats) as (keyof typeof stats)[]) stats[k] = 0;
      fz = await makeFuzzed(placement);
      await honestEnumerate();
      bystander = await startBystander();
    }, 30_000);

    afterAll(async () => {
      await bystander?.stop();
      if (fz !== undefined) {
        fz.backend.failPort(1, "detached");
        await fz.link.host.close().catch(() => undefined);
        await fz.link.host.retire();
      }
    });

    it("answers every request exactly once, writes only granted-writable memory, and contains index faults", async () => {
      // Baseline of the bystander, then the fuzz.
      const { baselineRate, rate: fuzzRate } = await fuzzBeside(
        { name: "bystander", rounds: () => bystander.rounds() },
        500,
        "backend",
        runArb,
        oneRun,
        stats,
      );
      expect(stats.runs).toBeGreaterThan(20);
      expect(stats.forwarded).toBeGreaterThan(0); // fuzzed URBs did reach the device
      expect(stats.faults).toBeGreaterThan(0);
      expect(bystander.errors).toEqual([]);
      // The bystander shares two cores with the fuzz thread and its workers: it slows, it must not stop.
      expect(fuzzRate).toBeGreaterThan(baselineRate * 0.05);
      expect(fz.workerTrouble).toEqual([]);
      const portStats = await fz.link.host.stats();
      expect(portStats.inFlight).toBe(0);
    }, 60_000);
  },
);
