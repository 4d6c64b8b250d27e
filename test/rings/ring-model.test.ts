/**
 * Model-based property test of the shared ring: random sequences of push,
 * take, respond, arm (final check), corrupt and reset, run against a plain
 * array model. Checks order, no loss, no duplicate, the in-flight bound, the
 * notification rule (a sleeping peer is always woken) and the sticky faults.
 */
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { BackRing } from "../../src/rings/back-ring.js";
import { RingFault } from "../../src/rings/faults.js";
import { FrontRing } from "../../src/rings/front-ring.js";
import { IdPool, slotId } from "../../src/rings/id-pool.js";
import { createRingBuffer, kReqProd, kRspProd, type RingGeometry } from "../../src/rings/layout.js";

const GEOMETRY: RingGeometry = { slots: 256, slotSize: 16 };
const SLOTS = GEOMETRY.slots;
const U32 = 2 ** 32;
const dist = (a: number, b: number) => (a - b) >>> 0;

interface Msg {
  id: number;
  seq: number;
}

interface Model {
  // Cursors mirrored from the Xen definitions.
  reqProdPvt: number;
  reqProdPushed: number;
  reqCons: number;
  rspProdPvt: number;
  rspProdPushed: number;
  rspCons: number;
  /** reqProd / rspProd as each end last read and checked it (they look again only when that is used up). */
  backSeen: number;
  frontSeen: number;
  committed: Msg[]; // written, not published
  published: Msg[]; // published, not taken by the backend
  unanswered: Msg[]; // taken by the backend, not answered
  answered: { msg: Msg; bogusId: boolean }[]; // response written, not published
  responses: { msg: Msg; bogusId: boolean }[]; // published, not taken by the frontend
  stranded: Msg[]; // answered under a bogus id: still in flight for the frontend
  backAsleep: boolean;
  frontAsleep: boolean;
  reqProdCorrupted: boolean;
  rspProdCorrupted: boolean;
  backFault: number;
  frontFault: number;
  nextSeq: number;
}

interface Real {
  sab: SharedArrayBuffer;
  front: FrontRing;
  back: BackRing;
  ids: IdPool;
  header: Int32Array;
  copy: Uint8Array;
}

function freshModel(start = 0): Model {
  return {
    reqProdPvt: start,
    reqProdPushed: start,
    reqCons: start,
    rspProdPvt: start,
    rspProdPushed: start,
    rspCons: start,
    backSeen: start,
    frontSeen: start,
    committed: [],
    published: [],
    unanswered: [],
    answered: [],
    responses: [],
    stranded: [],
    backAsleep: false,
    frontAsleep: false,
    reqProdCorrupted: false,
    rspProdCorrupted: false,
    backFault: 0,
    frontFault: 0,
    nextSeq: 1,
  };
}

function freshReal(start = 0): Real {
  const sab = createRingBuffer(GEOMETRY, { initialIndex: start });
  const ids = new IdPool(SLOTS);
  return {
    sab,
    ids,
    front: new FrontRing(sab, GEOMETRY, { ids }),
    back: new BackRing(sab, GEOMETRY),
    header: new Int32Array(sab),
    copy: new Uint8Array(GEOMETRY.slotSize),
  };
}

/** How often each command kind ran, to show the generators reach every path. */
const seen = new Map<string, number>();
const count = (what: string) => seen.set(what, (seen.get(what) ?? 0) + 1);

const dv = (b: Uint8Array) => new DataView(b.buffer, b.byteOffset, b.byteLength);

/**
 * The backend reads the shared reqProd again only once it has consumed all it
 * saw last time; a corrupted value then latches its fault.
 */
function backLooks(m: Model): void {
  if (m.backFault !== 0 || m.reqCons !== m.backSeen) return;
  if (m.reqProdCorrupted) m.backFault = RingFault.REQUEST_PROD_OVERFLOW;
  else m.backSeen = m.reqProdPushed;
}
function frontLooks(m: Model): void {
  if (m.frontFault !== 0 || m.rspCons !== m.frontSeen) return;
  if (m.rspProdCorrupted) m.frontFault = RingFault.RESPONSE_PROD_OVERFLOW;
  else m.frontSeen = m.rspProdPushed;
}

class PushRequests implements fc.Command<Model, Real> {
  constructor(readonly n: number) {}
  check = () => true;
  run(m: Model, r: Real): void {
    for (let i = 0; i < this.n; i++) {
      const slot = r.front.requestSlot();
      const full = dist(m.reqProdPvt, m.rspCons) === SLOTS || m.frontFault !== 0;
      expect(slot === null).toBe(full);
      if (slot === null) {
        if (m.frontFault === 0) count("ring full");
        return;
      }
      const id = r.ids.allocate();
      expect(id).toBeGreaterThanOrEqual(0); // ids never run out before slots do
      const msg = { id, seq: m.nextSeq++ };
      dv(slot).setUint32(0, msg.id, true);
      dv(slot).setUint32(4, msg.seq, true);
      r.front.commitRequest();
      m.reqProdPvt = (m.reqProdPvt + 1) >>> 0;
      m.committed.push(msg);
    }
    expect(r.front.inFlight).toBeLessThanOrEqual(SLOTS);
  }
  toString = () => `PushRequests(${this.n})`;
}

class PublishRequests implements fc.Command<Model, Real> {
  check = () => true;
  run(m: Model, r: Real): void {
    const notify = r.front.pushRequests();
    if (m.committed.length === 0) {
      expect(notify).toBe(false);
      return;
    }
    // No lost wake-up: a backend that armed and went to sleep must be notified.
    if (m.backAsleep) {
      expect(notify).toBe(true);
      count("sleeping backend notified");
    }
    if (notify) m.backAsleep = false;
    m.published.push(...m.committed);
    m.committed = [];
    m.reqProdPushed = m.reqProdPvt;
    m.reqProdCorrupted = false; // our store replaced the corrupted value
  }
  toString = () => "PublishRequests";
}

class BackTake implements fc.Command<Model, Real> {
  constructor(readonly n: number) {}
  check = () => true;
  run(m: Model, r: Real): void {
    for (let i = 0; i < this.n; i++) {
      backLooks(m);
      const got = r.back.takeRequest(r.copy);
      if (m.backFault !== 0 || m.published.length === 0) {
        expect(got).toBe(false);
        expect(r.back.fault).toBe(m.backFault);
        if (m.backFault !== 0) count("request prod overflow latched");
        return;
      }
      count("request taken");
      expect(got).toBe(true);
      const want = m.published.shift()!;
      expect({ id: slotId(r.copy), seq: dv(r.copy).getUint32(4, true) }).toEqual(want);
      m.reqCons = (m.reqCons + 1) >>> 0;
      m.unanswered.push(want);
    }
  }
  toString = () => `BackTake(${this.n})`;
}

class BackRespond implements fc.Command<Model, Real> {
  /** `pick` chooses which unanswered request to answer: completions come in any order. */
  constructor(
    readonly pick: number,
    readonly bogusId: boolean,
  ) {}
  check = (m: Readonly<Model>) => m.unanswered.length > 0;
  run(m: Model, r: Real): void {
    const [msg] = m.unanswered.splice(this.pick % m.unanswered.length, 1) as [Msg];
    const slot = r.back.responseSlot();
    // A lying backend answers an id the frontend does not have in flight.
    const id = this.bogusId ? SLOTS + (msg.seq % 1000) : msg.id;
    dv(slot).setUint32(0, id, true);
    dv(slot).setUint32(4, msg.seq, true);
    r.back.commitResponse();
    m.rspProdPvt = (m.rspProdPvt + 1) >>> 0;
    m.answered.push({ msg, bogusId: this.bogusId });
  }
  toString = () => `BackRespond(${this.pick}, bogus=${this.bogusId})`;
}

class PublishResponses implements fc.Command<Model, Real> {
  check = () => true;
  run(m: Model, r: Real): void {
    const notify = r.back.pushResponses();
    if (m.answered.length === 0) {
      expect(notify).toBe(false);
      return;
    }
    if (m.frontAsleep) {
      expect(notify).toBe(true);
      count("sleeping frontend notified");
    }
    if (notify) m.frontAsleep = false;
    m.responses.push(...m.answered);
    m.answered = [];
    m.rspProdPushed = m.rspProdPvt;
    m.rspProdCorrupted = false;
  }
  toString = () => "PublishResponses";
}

class FrontTake implements fc.Command<Model, Real> {
  constructor(readonly n: number) {}
  check = () => true;
  run(m: Model, r: Real): void {
    for (let i = 0; i < this.n; i++) {
      frontLooks(m);
      const got = r.front.takeResponse(r.copy);
      if (m.frontFault !== 0 || m.responses.length === 0) {
        expect(got).toBe(false);
        expect(r.front.fault).toBe(m.frontFault);
        if (m.frontFault !== 0) count("response prod overflow latched");
        return;
      }
      const { msg, bogusId } = m.responses.shift()!;
      m.rspCons = (m.rspCons + 1) >>> 0;
      if (bogusId) {
        expect(got).toBe(false);
        count("bogus id latched");
        m.stranded.push(msg);
        m.frontFault = RingFault.RESPONSE_ID_NOT_IN_FLIGHT;
        expect(r.front.fault).toBe(m.frontFault);
        return;
      }
      expect(got).toBe(true);
      expect({ id: slotId(r.copy), seq: dv(r.copy).getUint32(4, true) }).toEqual(msg);
    }
  }
  toString = () => `FrontTake(${this.n})`;
}

class BackArm implements fc.Command<Model, Real> {
  check = () => true;
  run(m: Model, r: Real): void {
    backLooks(m);
    const busy = r.back.armAndCheck();
    // A faulted ring reports "pending" so its owner wakes up and sees the fault.
    expect(busy).toBe(m.backFault !== 0 || m.published.length > 0);
    if (!busy) m.backAsleep = true;
  }
  toString = () => "BackArm";
}

class FrontArm implements fc.Command<Model, Real> {
  check = () => true;
  run(m: Model, r: Real): void {
    frontLooks(m);
    const busy = r.front.armAndCheck();
    const next = m.responses[0];
    expect(busy).toBe(m.frontFault !== 0 || next !== undefined);
    if (!busy) m.frontAsleep = true;
  }
  toString = () => "FrontArm";
}

/**
 * A hostile frontend stores an impossible reqProd. The value is chosen so it
 * stays impossible whatever the honest side does before it is looked at
 * (more than 3 rings away); the exact edges have their own unit tests.
 */
class CorruptReqProd implements fc.Command<Model, Real> {
  constructor(readonly delta: number) {}
  private value(m: Readonly<Model>): number {
    return (m.rspProdPvt + this.delta) % U32;
  }
  check = (m: Readonly<Model>) => dist(this.value(m), m.rspProdPvt) > 3 * SLOTS;
  run(m: Model, r: Real): void {
    Atomics.store(r.header, kReqProd, this.value(m) | 0);
    m.reqProdCorrupted = true;
    m.backAsleep = false; // the backend's next look sees it, whatever it was doing
  }
  toString = () => `CorruptReqProd(+${this.delta})`;
}

/** A hostile backend stores an impossible rspProd (more than 3 rings from rspCons, as above). */
class CorruptRspProd implements fc.Command<Model, Real> {
  constructor(readonly delta: number) {}
  private value(m: Readonly<Model>): number {
    return (m.rspCons + this.delta) % U32;
  }
  check = (m: Readonly<Model>) => dist(this.value(m), m.rspCons) > 3 * SLOTS;
  run(m: Model, r: Real): void {
    Atomics.store(r.header, kRspProd, this.value(m) | 0);
    m.rspProdCorrupted = true;
    m.frontAsleep = false;
  }
  toString = () => `CorruptRspProd(+${this.delta})`;
}

class Reset implements fc.Command<Model, Real> {
  check = () => true;
  run(m: Model, r: Real): void {
    const lost = r.front.reset();
    r.back.reset();
    const inFlight = [...m.committed, ...m.published, ...m.unanswered, ...m.answered.map((a) => a.msg)];
    inFlight.push(...m.responses.map((a) => a.msg), ...m.stranded);
    expect(lost.sort((a, b) => a - b)).toEqual(inFlight.map((x) => x.id).sort((a, b) => a - b));
    expect(r.front.sharedFault()).toBe(0);
    Object.assign(m, freshModel(), { nextSeq: m.nextSeq });
    count("reset");
  }
  toString = () => "Reset";
}

const edgeDelta = (lo: number) =>
  fc.oneof(
    fc.integer({ min: lo, max: lo + 3 }),
    fc.integer({ min: U32 - 4, max: U32 - 1 }),
    fc.nat({ max: U32 - 1 }),
  );

const commands = [
  fc.integer({ min: 1, max: 80 }).map((n) => new PushRequests(n)),
  fc.constant(new PublishRequests()),
  fc.integer({ min: 1, max: 80 }).map((n) => new BackTake(n)),
  fc.tuple(fc.nat(), fc.boolean()).map(([p, bogus]) => new BackRespond(p, bogus)),
  fc.tuple(fc.nat(), fc.constant(false)).map(([p, b]) => new BackRespond(p, b)),
  fc.constant(new PublishResponses()),
  fc.integer({ min: 1, max: 80 }).map((n) => new FrontTake(n)),
  fc.constant(new BackArm()),
  fc.constant(new FrontArm()),
];
const hostile = [
  edgeDelta(3 * SLOTS + 1).map((d) => new CorruptReqProd(d)),
  edgeDelta(3 * SLOTS + 1).map((d) => new CorruptRspProd(d)),
  fc.constant(new Reset()),
];

const startIndex = fc.oneof(
  fc.constant(0),
  fc.integer({ min: U32 - 600, max: U32 - 1 }),
  fc.nat({ max: U32 - 1 }),
);

function runModel(cmdArbs: fc.Arbitrary<fc.Command<Model, Real>>[], numRuns: number): void {
  fc.assert(
    fc.property(startIndex, fc.commands(cmdArbs, { size: "large" }), (start, cmds) => {
      fc.modelRun(() => ({ model: freshModel(start), real: freshReal(start) }), cmds);
    }),
    { numRuns },
  );
}

describe("shared ring against a model", () => {
  it("keeps order, loses nothing and wakes every sleeper under honest peers", () => {
    seen.clear();
    runModel(commands, 300);
    for (const what of [
      "request taken",
      "ring full",
      "sleeping backend notified",
      "sleeping frontend notified",
    ]) {
      expect(seen.get(what) ?? 0, what).toBeGreaterThan(0);
    }
  });

  it("latches a sticky fault on impossible peer state and recovers after reset", () => {
    seen.clear();
    runModel([...commands, ...hostile], 300);
    for (const what of [
      "request prod overflow latched",
      "response prod overflow latched",
      "bogus id latched",
      "reset",
      "request taken",
    ]) {
      expect(seen.get(what) ?? 0, what).toBeGreaterThan(0);
    }
  });

  it("crosses the 2^32 index wrap", () => {
    const start = U32 - 1000;
    const r = freshReal(start);
    const m = freshModel(start);
    const rounds = 8; // 2048 messages from 1000 below the wrap
    for (let round = 0; round < rounds; round++) {
      new PushRequests(SLOTS).run(m, r);
      new PublishRequests().run(m, r);
      new BackTake(SLOTS).run(m, r);
      for (let i = 0; i < SLOTS; i++) new BackRespond(i * 7, false).run(m, r);
      new PublishResponses().run(m, r);
      new FrontTake(SLOTS).run(m, r);
    }
    expect(m.nextSeq - 1).toBe(rounds * SLOTS);
    expect(m.rspCons).toBe((start + rounds * SLOTS) >>> 0);
    expect(m.rspCons).toBeLessThan(start); // it wrapped
    expect(r.front.fault).toBe(0);
    expect(r.back.fault).toBe(0);
  });
});
