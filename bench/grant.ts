/**
 * Grant mapper hot path (src/dma-map/grant-mapper.ts): one grant map+unmap,
 * and a 4-segment buffer mapped as one direct view vs through a 16 KiB bounce
 * buffer (OUT: copied in at map time), side by side. Setup is outside the
 * measured functions; after the run we check the work happened (bytes seen,
 * every pin released).
 */
import { Bench } from "tinybench";
import {
  createGrantTableStorage,
  type DomId,
  FRAME_SIZE,
  GrantMapper,
  type GrantSegment,
  GrantTableOwner,
  type GuestFrame,
  GuestMemory,
  grantFaultMessage,
  isGrantFault,
} from "../src/dma-map/index.js";
import { benchTiming, printBench, type Result, type SuiteOptions } from "./harness.js";

const BACKEND = 1 as DomId;

/** Task name → its stable result name. */
export const GRANT_RESULT_KEYS: Record<string, string> = {
  "map+unmap 1 segment": "grant.map_unmap_per_s",
  "mapSegments contiguous 4 segments": "grant.map_segments4_contiguous_per_s",
  "mapSegments scattered 4 segments (bounce 16 KiB)": "grant.map_segments4_bounce_per_s",
};

export const grantSuite = {
  name: "grant",
  async run(opts: SuiteOptions): Promise<Result[]> {
    const memory = GuestMemory.create({ regionFrames: [64] });
    const table = createGrantTableStorage({ entries: 64 });
    const owner = new GrantTableOwner({ storage: table, memory });
    const mapper = new GrantMapper({ table, memory });
    // Guest data the OUT buffers should show: byte i of frame f is (f + i) & 0xff.
    for (let f = 0; f < 64; f++) {
      const view = memory.frameView(f as GuestFrame);
      for (let i = 0; i < view.length; i++) view[i] = (f + i) & 0xff;
    }

    const single = owner.grant(BACKEND, 1 as GuestFrame, 1, false);
    const fourFrames = (first: number, stride: number): GrantSegment[] =>
      [0, 1, 2, 3].map((k) => ({
        ref: owner.grant(BACKEND, (first + k * stride) as GuestFrame, 1, true),
        offset: 0,
        length: FRAME_SIZE,
      }));
    const contiguous = fourFrames(10, 1);
    const scattered = fourFrames(20, 2);

    let stamp = 0;
    let bytesSeen = 0;
    const bench = new Bench(benchTiming(opts));
    bench
      .add("map+unmap 1 segment", () => {
        const view = mapper.map(single, BACKEND, "write", 0, 512);
        if (isGrantFault(view)) throw new Error(grantFaultMessage(view));
        view[0] = ++stamp & 0xff;
        mapper.unmap(single);
      })
      .add("mapSegments contiguous 4 segments", () => {
        const buffer = mapper.mapSegments(BACKEND, "read", contiguous);
        if (isGrantFault(buffer)) throw new Error(grantFaultMessage(buffer));
        bytesSeen += buffer.view[FRAME_SIZE + 1]! === 12 ? 1 : 0; // frame 11, byte 1
        buffer.complete(buffer.length);
      })
      .add("mapSegments scattered 4 segments (bounce 16 KiB)", () => {
        const buffer = mapper.mapSegments(BACKEND, "read", scattered);
        if (isGrantFault(buffer)) throw new Error(grantFaultMessage(buffer));
        bytesSeen += buffer.view[FRAME_SIZE + 1]! === 23 ? 1 : 0; // frame 22, byte 1
        buffer.complete(buffer.length);
      });
    await bench.run();
    const results = printBench("grant: map/unmap and multi-segment buffers", bench);

    // The work was done: bytes written and read, every pin released, bounces counted.
    const { stats } = mapper;
    const transfers = stats.directBuffers + stats.bouncedBuffers;
    if (memory.frameView(1 as GuestFrame)[0] !== (stamp & 0xff))
      throw new Error("map+unmap did not write guest memory");
    if (bytesSeen !== transfers)
      throw new Error(`saw the guest bytes in ${bytesSeen} of ${transfers} buffers`);
    if (stats.maps !== stats.unmaps || stats.faults !== 0)
      throw new Error(`pins leaked: ${JSON.stringify(stats)}`);
    if (stats.bounceBytes !== stats.bouncedBuffers * 4 * FRAME_SIZE)
      throw new Error("bounce bytes miscounted");
    console.log(
      `grant: ${stats.maps} pins, ${stats.directBuffers} direct + ${stats.bouncedBuffers} bounced buffers, ${(stats.bounceBytes / 2 ** 20).toFixed(0)} MiB bounced`,
    );
    return results.map((r) => ({ ...r, name: GRANT_RESULT_KEYS[r.name] ?? r.name, unit: "maps/s" }));
  },
};
