/**
 * Property tests of the grant mapper against the reference model in
 * ./support.ts: random grants (honest and hostile raw entries) and random
 * (ref, domid, access, offset, length) including huge, negative, NaN and 2^32
 * values. Guest memory starts as a canary pattern; every successful write
 * mapping is written through and mirrored in a shadow copy, so at the end any
 * byte changed outside a granted range shows up as a shadow mismatch.
 */
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import {
  ALL_GRANT_FAULTS,
  type DomId,
  FRAME_SIZE,
  GrantFault,
  type GrantFaultCode,
  type GrantRef,
  type GuestFrame,
  grantFaultName,
  isGrantFault,
  MAP_COUNT_MAX,
  MAX_GRANT_FRAMES,
} from "../../src/dma-map/index.js";
import {
  fillCanary,
  mockGuest,
  modelVerdict,
  type RawEntry,
  readRawEntry,
  snapshot,
  statusWord,
  writeRawEntry,
} from "./support.js";

const REGION_FRAMES = [6, 3];
const TOTAL_FRAMES = 9;
const ENTRIES = 12;

const weirdNumber = fc.constantFrom(
  -1,
  Number.NaN,
  Number.POSITIVE_INFINITY,
  2 ** 32,
  2 ** 32 - 1,
  1.5,
  2 ** 53,
  -0,
);

const rawEntry: fc.Arbitrary<RawEntry> = fc.record({
  status: fc.oneof(
    {
      weight: 6,
      arbitrary: fc
        .record({
          permit: fc.boolean(),
          readonly: fc.boolean(),
          domid: fc.constantFrom(1, 1, 1, 2, 0xffff),
          mapCount: fc.constantFrom(0, 0, 0, 1, MAP_COUNT_MAX),
          reservedBits: fc.constantFrom(0, 0, 0, 0, 1 << 1, 1 << 3, 1 << 4),
        })
        .map(statusWord),
    },
    { weight: 1, arbitrary: fc.integer({ min: -(2 ** 31), max: 2 ** 31 - 1 }) },
  ),
  frame: fc.oneof(fc.integer({ min: 0, max: TOTAL_FRAMES + 1 }), fc.constantFrom(2 ** 32 - 1, 2 ** 31, 5, 6)),
  nframes: fc.oneof(fc.integer({ min: 0, max: 4 }), fc.constantFrom(MAX_GRANT_FRAMES + 1, 2 ** 32 - 1)),
});

const sizeLike = fc.oneof(
  { weight: 8, arbitrary: fc.integer({ min: 0, max: 3 * FRAME_SIZE }) },
  { weight: 2, arbitrary: fc.constantFrom(0, 1, FRAME_SIZE - 1, FRAME_SIZE, 2 * FRAME_SIZE) },
  { weight: 1, arbitrary: weirdNumber },
);

const request = fc.record({
  ref: fc.oneof(
    { weight: 10, arbitrary: fc.integer({ min: 0, max: ENTRIES - 1 }) },
    { weight: 1, arbitrary: fc.oneof(weirdNumber, fc.constant(ENTRIES)) },
  ),
  domid: fc.oneof(
    { weight: 8, arbitrary: fc.constant(1) },
    { weight: 1, arbitrary: fc.constantFrom(2, -1, Number.NaN, 0x10001) },
  ),
  access: fc.constantFrom("read" as const, "write" as const),
  offset: sizeLike,
  length: sizeLike,
  fill: fc.integer({ min: 0, max: 255 }),
});

/**
 * A table: the first refs granted honestly through GrantTableOwner (which hands
 * out refs from 0 up), the rest written raw by a hostile frontend or left free.
 */
const tablePlan = fc.record({
  honest: fc.array(
    fc.record({
      frame: fc.integer({ min: 0, max: TOTAL_FRAMES - 1 }),
      nframes: fc.integer({ min: 1, max: 3 }),
      readonly: fc.boolean(),
      domid: fc.constantFrom(1, 1, 1, 2),
    }),
    { maxLength: ENTRIES / 2 },
  ),
  raw: fc.array(fc.option(rawEntry, { freq: 4 }), { minLength: ENTRIES, maxLength: ENTRIES }),
});

/** Frames [frame, frame + nframes) inside one region of REGION_FRAMES = [6, 3]. */
const insideOneRegion = (frame: number, nframes: number) =>
  frame + nframes <= 6 || (frame >= 6 && frame + nframes <= TOTAL_FRAMES);

describe("GrantMapper against the reference model", () => {
  it("agrees with the model on every verdict; no byte outside a grant changes; every code is exercised", () => {
    const seen = new Set<GrantFaultCode>();
    fc.assert(
      fc.property(tablePlan, fc.array(request, { minLength: 1, maxLength: 40 }), (plan, requests) => {
        const g = mockGuest(REGION_FRAMES, ENTRIES);
        const shadow = fillCanary(g.memory);
        let nextRef = 0;
        for (const h of plan.honest) {
          const grant = () => g.owner.grant(h.domid as DomId, h.frame as GuestFrame, h.nframes, h.readonly);
          if (!insideOneRegion(h.frame, h.nframes)) {
            expect(grant).toThrow(expect.objectContaining({ code: "ERR_USBVIRT_GRANT_INVALID_ARGUMENT" }));
            continue;
          }
          expect(grant()).toBe(nextRef++);
        }
        for (let ref = nextRef; ref < ENTRIES; ref++) {
          const entry = plan.raw[ref];
          if (entry) writeRawEntry(g.table, ref, entry);
        }
        const entries = Array.from({ length: ENTRIES }, (_, ref) => readRawEntry(g.table, ref));
        for (const r of requests) {
          const expected = modelVerdict(entries, REGION_FRAMES, r.ref, r.domid, r.access, r.offset, r.length);
          const before =
            Number.isInteger(r.ref) && r.ref >= 0 && r.ref < ENTRIES
              ? readRawEntry(g.table, r.ref)
              : undefined;
          const result = g.mapper.map(r.ref as GrantRef, r.domid as DomId, r.access, r.offset, r.length);
          if (isGrantFault(result)) {
            expect(grantFaultName(result)).toBe(grantFaultName(expected.fault));
            seen.add(result);
            // A rejection leaves the entry exactly as it was (nothing pinned).
            if (before) expect(readRawEntry(g.table, r.ref)).toEqual(before);
            continue;
          }
          expect(grantFaultName(GrantFault.OK)).toBe(grantFaultName(expected.fault));
          seen.add(GrantFault.OK);
          const region = g.memory.regions.indexOf(result.buffer as SharedArrayBuffer);
          expect(g.memory.guestOffsetOf(region, result.byteOffset)).toBe(expected.guestOffset);
          expect(result.length === r.length).toBe(true); // === so that a length of -0 matches 0
          // The view shows guest memory as the shadow says it should be.
          expect(
            Buffer.from(result).equals(
              shadow.subarray(expected.guestOffset, expected.guestOffset + r.length),
            ),
          ).toBe(true);
          if (r.access === "write") {
            result.fill(r.fill);
            shadow.fill(r.fill, expected.guestOffset, expected.guestOffset + r.length);
          }
          expect(g.mapper.unmap(r.ref as GrantRef)).toBe(GrantFault.OK);
          expect(readRawEntry(g.table, r.ref)).toEqual(before);
        }
        expect(Buffer.from(snapshot(g.memory)).equals(shadow)).toBe(true);
      }),
      { numRuns: 300, seed: 0x05b5 },
    );
    const mapFaults = ALL_GRANT_FAULTS.filter(
      (c) =>
        c !== GrantFault.NOT_MAPPED &&
        c !== GrantFault.TOO_MANY_SEGMENTS &&
        c !== GrantFault.TRANSFER_TOO_LONG,
    );
    expect([...seen].map(grantFaultName).sort()).toEqual(mapFaults.map(grantFaultName).sort());
  });

  it("never throws nor maps outside memory when the frontend writes random bytes into the table", () => {
    fc.assert(
      fc.property(
        fc.uint8Array({ minLength: ENTRIES * 16, maxLength: ENTRIES * 16 }),
        fc.array(request, { minLength: 1, maxLength: 30 }),
        (garbage, requests) => {
          const g = mockGuest(REGION_FRAMES, ENTRIES);
          new Uint8Array(g.table).set(garbage);
          const entries = Array.from({ length: ENTRIES }, (_, ref) => readRawEntry(g.table, ref));
          for (const r of requests) {
            const expected = modelVerdict(
              entries,
              REGION_FRAMES,
              r.ref,
              r.domid,
              r.access,
              r.offset,
              r.length,
            );
            const result = g.mapper.map(r.ref as GrantRef, r.domid as DomId, r.access, r.offset, r.length);
            if (isGrantFault(result)) {
              expect(result).toBe(expected.fault);
              continue;
            }
            expect(expected.fault).toBe(GrantFault.OK);
            const region = g.memory.regions.indexOf(result.buffer as SharedArrayBuffer);
            expect(region).toBeGreaterThanOrEqual(0);
            expect(result.byteOffset + result.length).toBeLessThanOrEqual(
              g.memory.regions[region]!.byteLength,
            );
            // Unmap of a garbage entry never throws; it is OK, or NOT_MAPPED if the count was already 0.
            expect([GrantFault.OK, GrantFault.NOT_MAPPED]).toContain(g.mapper.unmap(r.ref as GrantRef));
          }
          // Unmapping everything, twice, never throws and never underflows a count.
          for (let ref = 0; ref < ENTRIES; ref++) {
            for (let i = 0; i < 2; i++) g.mapper.unmap(ref as GrantRef);
            expect((readRawEntry(g.table, ref).status >>> 5) & 0x7ff).toBeLessThanOrEqual(MAP_COUNT_MAX);
          }
        },
      ),
      { numRuns: 300, seed: 0xbad },
    );
  });
});
