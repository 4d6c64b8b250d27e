/**
 * Data integrity of multi-segment URBs through the whole engine (frontend → URB ring → backend worker →
 * grant mapper → port ring → port service → emulated loopback, and back), on both placements of the
 * device: the backend's thread and a port worker.
 *
 * fast-check draws a bulk OUT and a bulk IN of the same total length, each split into its own random
 * segments: lengths, alignments (odd offsets included) and gaps between them (no gap: segments that are
 * one run of guest memory, the zero-copy view; a gap: a scattered buffer the port service bounces), up to
 * 20 segments (past 8 the frontend uses an indirect segment page). The IN must bring back exactly the
 * OUT's bytes, segment by segment, and write nothing into the gaps around its segments (canaries).
 */
import fc from "fast-check";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { GuestRange } from "../../src/guest/guest-memory-allocator.js";
import { OK } from "../../src/urb/status.js";
import type { EndpointNum } from "../../src/urb/types.js";
import { addr, port } from "../support/brands.js";
import { pattern } from "../support/data.js";
import { type Rig, rig } from "./helpers.js";

interface SegSpec {
  readonly length: number;
  readonly align: number;
  /** Bytes left free (and filled with canaries) before this segment. */
  readonly gap: number;
}

const arbSeg: fc.Arbitrary<SegSpec> = fc.record({
  length: fc.oneof(fc.integer({ min: 1, max: 64 }), fc.integer({ min: 65, max: 5000 })),
  align: fc.constantFrom(1, 2, 64, 4096),
  gap: fc.oneof(fc.constant(0), fc.integer({ min: 1, max: 300 })),
});

/** An OUT layout, and an IN layout of the same total length (the IN's last segment takes up the rest). */
const arbLayouts = fc
  .tuple(fc.array(arbSeg, { minLength: 1, maxLength: 20 }), fc.array(arbSeg, { minLength: 1, maxLength: 20 }))
  .map(([out, inn]) => {
    const total = out.reduce((n, s) => n + s.length, 0);
    const fitted: SegSpec[] = [];
    let left = total;
    for (const s of inn) {
      if (left === 0) break;
      const length = Math.min(s.length, left);
      fitted.push({ ...s, length });
      left -= length;
    }
    if (left > 0) fitted.push({ length: left, align: 64, gap: 0 });
    return { out, in: fitted, total };
  });

const CANARY = 0xa5;

/** Always tried first: every segment separated by a gap (bounced), and every segment adjacent (viewed). */
const scatteredBoth = {
  out: [
    { length: 1000, align: 1, gap: 3 },
    { length: 17, align: 1, gap: 5 },
    { length: 3000, align: 64, gap: 100 },
  ],
  in: [
    { length: 7, align: 2, gap: 1 },
    { length: 4000, align: 1, gap: 9 },
    { length: 10, align: 1, gap: 2 },
  ],
  total: 4017,
};
const oneRunBoth = {
  out: [
    { length: 64, align: 4096, gap: 0 },
    { length: 128, align: 1, gap: 0 },
    { length: 100, align: 1, gap: 0 },
  ],
  in: [
    { length: 1, align: 4096, gap: 0 },
    { length: 291, align: 1, gap: 0 },
  ],
  total: 292,
};

describe.each(["backend", "worker"] as const)(
  "multi-segment bulk data, device on the %s thread",
  (placement) => {
    let r: Rig;
    beforeAll(async () => {
      r = await rig();
      await r.conn.attach(1, { kind: "emulated", name: "loopback", placement });
      await r.guest.enumerate(port(1), addr(2));
    });
    afterAll(async () => {
      await r.close();
    });

    /** Allocate the segments (and their gaps, as canary ranges) in address order. */
    function place(specs: readonly SegSpec[]): { segs: GuestRange[]; gaps: GuestRange[] } {
      const segs: GuestRange[] = [];
      const gaps: GuestRange[] = [];
      for (const s of specs) {
        if (s.gap > 0) {
          const g = r.guest.buffers.allocate(s.gap, 1);
          r.guest.bytes(g).fill(CANARY);
          gaps.push(g);
        }
        segs.push(r.guest.buffers.allocate(s.length, s.align));
      }
      // A canary after the last segment too, so an overrun past the end shows.
      const tail = r.guest.buffers.allocate(64, 1);
      r.guest.bytes(tail).fill(CANARY);
      gaps.push(tail);
      return { segs, gaps };
    }

    function release(...groups: GuestRange[][]): void {
      for (const g of groups) for (const range of g) r.guest.buffers.release(range);
    }

    const bulk = (directionIn: boolean, buffer: GuestRange[]) =>
      r.hcd.submit({
        type: "bulk",
        port: port(1),
        device: addr(2),
        endpoint: 1 as EndpointNum,
        directionIn,
        buffer,
      });

    it("an OUT then an IN with random segment layouts: the bytes come back intact, nothing outside is written", async () => {
      let seed = 0;
      await fc.assert(
        fc.asyncProperty(arbLayouts, async (layout) => {
          const data = pattern(layout.total, ++seed);
          const out = place(layout.out);
          const inn = place(layout.in);
          try {
            let at = 0;
            for (const s of out.segs) {
              r.guest.bytes(s).set(data.subarray(at, at + s.length));
              at += s.length;
            }
            for (const s of inn.segs) r.guest.bytes(s).fill(0);
            const sent = await bulk(false, out.segs);
            expect(sent).toMatchObject({ status: OK, actualLength: layout.total });
            const got = await bulk(true, inn.segs);
            expect(got).toMatchObject({ status: OK, actualLength: layout.total });
            at = 0;
            for (const s of inn.segs) {
              expect(Buffer.compare(r.guest.bytes(s), data.subarray(at, at + s.length))).toBe(0);
              at += s.length;
            }
            for (const g of [...out.gaps, ...inn.gaps]) {
              expect(r.guest.bytes(g).every((b) => b === CANARY)).toBe(true);
            }
          } finally {
            release(out.segs, out.gaps, inn.segs, inn.gaps);
          }
        }),
        { numRuns: 60, examples: [[scatteredBoth], [oneRunBoth]] },
      );
      // The bounce path was taken (the examples alone guarantee two bounced URBs: the scattered OUT and IN).
      const stats = (await r.conn.stats()).portWorkers[1];
      expect(stats?.bounceCopies).toBeGreaterThanOrEqual(2);
    });
  },
);
