/**
 * Grant lifecycle (Xen grant_table.h semantics with usbvirt's extent and map
 * count): grant, map, revoke refused while mapped, unmap, revoke; and one
 * example per mapper fault code, each asserted by its own code.
 */
import { describe, expect, it } from "vitest";
import {
  ALL_GRANT_FAULTS,
  createGrantTableStorage,
  type DomId,
  FRAME_SIZE,
  GrantError,
  GrantFault,
  type GrantRef,
  GrantTableOwner,
  type GuestFrame,
  GuestMemory,
  grantFaultMessage,
  grantFaultName,
  isGrantFault,
  MAP_COUNT_MAX,
  MAX_GRANT_ENTRIES,
} from "../../src/dma-map/index.js";
import { BACKEND, mockGuest, OTHER_DOMAIN, readRawEntry, statusWord, writeRawEntry } from "./support.js";

const frame = (n: number) => n as GuestFrame;

describe("grant table storage and owner", () => {
  it("validates the entry count eagerly", () => {
    expect(() => createGrantTableStorage({ entries: 0 })).toThrow(
      /options\.entries must be an integer in \[1, 65536\]/,
    );
    expect(() => createGrantTableStorage({ entries: MAX_GRANT_ENTRIES + 1 })).toThrow(/got 65537/);
    expect(createGrantTableStorage({ entries: 4 }).byteLength).toBe(64);
  });

  it("refuses to own storage that already has grants", () => {
    const g = mockGuest();
    g.owner.grant(BACKEND, frame(0), 1, false);
    expect(() => new GrantTableOwner({ storage: g.table, memory: g.memory })).toThrow(
      expect.objectContaining({ code: "ERR_USBVIRT_GRANT_STORAGE_IN_USE" }),
    );
  });

  it("writes the Xen-order entry: frame and extent, then flags|domid", () => {
    const g = mockGuest();
    const ref = g.owner.grant(BACKEND, frame(3), 2, true);
    expect(ref).toBe(0);
    expect(readRawEntry(g.table, ref)).toEqual({
      status: statusWord({ permit: true, readonly: true, domid: BACKEND }),
      frame: 3,
      nframes: 2,
    });
  });

  it("throws GrantError with a stable code on frontend misuse", () => {
    const g = mockGuest([4], 2);
    const codeOf = (fn: () => unknown) => {
      try {
        fn();
      } catch (err) {
        expect(err).toBeInstanceOf(GrantError);
        return (err as GrantError).code;
      }
      return "no throw";
    };
    expect(codeOf(() => g.owner.grant(BACKEND, frame(3), 2, false))).toBe(
      "ERR_USBVIRT_GRANT_INVALID_ARGUMENT",
    );
    expect(codeOf(() => g.owner.grant(BACKEND, frame(0), 0, false))).toBe(
      "ERR_USBVIRT_GRANT_INVALID_ARGUMENT",
    );
    expect(codeOf(() => g.owner.grant(0x7ff0 as DomId, frame(0), 1, false))).toBe(
      "ERR_USBVIRT_GRANT_INVALID_ARGUMENT",
    );
    expect(codeOf(() => g.owner.tryRevoke(1 as GrantRef))).toBe("ERR_USBVIRT_GRANT_NOT_ACTIVE");
    g.owner.grant(BACKEND, frame(0), 1, false);
    g.owner.grant(BACKEND, frame(1), 1, false);
    expect(codeOf(() => g.owner.grant(BACKEND, frame(2), 1, false))).toBe("ERR_USBVIRT_GRANT_TABLE_FULL");
  });
});

describe("revoke and unmap", () => {
  it("revoke fails while mapped and succeeds after unmap; the ref is reused", () => {
    const g = mockGuest();
    const ref = g.owner.grant(BACKEND, frame(1), 1, false);
    const first = g.mapper.map(ref, BACKEND, "write", 0, 16);
    const second = g.mapper.map(ref, BACKEND, "read", 16, 16);
    expect(isGrantFault(first) || isGrantFault(second)).toBe(false);
    expect(g.owner.mapCount(ref)).toBe(2);
    expect(g.owner.tryRevoke(ref)).toBe(false);
    expect(g.mapper.unmap(ref)).toBe(GrantFault.OK);
    expect(g.owner.tryRevoke(ref)).toBe(false);
    expect(g.mapper.unmap(ref)).toBe(GrantFault.OK);
    expect(g.owner.tryRevoke(ref)).toBe(true);
    expect(g.owner.isGranted(ref)).toBe(false);
    expect(g.mapper.map(ref, BACKEND, "read", 0, 1)).toBe(GrantFault.NOT_GRANTED);
    expect(g.owner.grant(BACKEND, frame(2), 1, false)).toBe(ref);
  });

  it("rejects a double unmap with NOT_MAPPED and leaves the entry intact", () => {
    const g = mockGuest();
    const ref = g.owner.grant(BACKEND, frame(0), 1, false);
    const before = readRawEntry(g.table, ref);
    expect(isGrantFault(g.mapper.map(ref, BACKEND, "read", 0, 8))).toBe(false);
    expect(g.mapper.unmap(ref)).toBe(GrantFault.OK);
    expect(g.mapper.unmap(ref)).toBe(GrantFault.NOT_MAPPED);
    expect(g.mapper.unmap(ref)).toBe(GrantFault.NOT_MAPPED);
    expect(readRawEntry(g.table, ref)).toEqual(before);
    expect(g.mapper.unmap(999 as GrantRef)).toBe(GrantFault.REF_OUT_OF_RANGE);
    expect(g.owner.tryRevoke(ref)).toBe(true);
  });
});

describe("one example per map fault", () => {
  // Memory: region 0 = frames 0..7, region 1 = frames 8..12.
  const g = mockGuest([8, 5], 16);
  const rw = g.owner.grant(BACKEND, frame(2), 2, false);
  const ro = g.owner.grant(BACKEND, frame(9), 1, true);
  const other = g.owner.grant(OTHER_DOMAIN, frame(0), 1, false);
  const ungranted = 10 as GrantRef;
  const raw = (ref: number, status: number, f: number, n: number) => {
    writeRawEntry(g.table, ref, { status, frame: f, nframes: n });
    return ref as GrantRef;
  };
  const good = statusWord({ permit: true, readonly: false, domid: BACKEND });
  const reserved = raw(
    11,
    statusWord({ permit: true, readonly: false, domid: BACKEND, reservedBits: 1 << 3 }),
    0,
    1,
  );
  const zeroExtent = raw(12, good, 0, 0);
  const crossesRegions = raw(13, good, 7, 2);
  const pastMemory = raw(14, good, 12, 2);
  const saturated = raw(
    15,
    statusWord({ permit: true, readonly: false, domid: BACKEND, mapCount: MAP_COUNT_MAX }),
    0,
    1,
  );
  const cases: [string, () => unknown, number][] = [
    [
      "REF_OUT_OF_RANGE",
      () => g.mapper.map(16 as GrantRef, BACKEND, "read", 0, 1),
      GrantFault.REF_OUT_OF_RANGE,
    ],
    ["NOT_GRANTED", () => g.mapper.map(ungranted, BACKEND, "read", 0, 1), GrantFault.NOT_GRANTED],
    [
      "MALFORMED_ENTRY (reserved bits)",
      () => g.mapper.map(reserved, BACKEND, "read", 0, 1),
      GrantFault.MALFORMED_ENTRY,
    ],
    [
      "MALFORMED_ENTRY (zero extent)",
      () => g.mapper.map(zeroExtent, BACKEND, "read", 0, 0),
      GrantFault.MALFORMED_ENTRY,
    ],
    ["WRONG_DOMAIN", () => g.mapper.map(other, BACKEND, "read", 0, 1), GrantFault.WRONG_DOMAIN],
    ["READ_ONLY", () => g.mapper.map(ro, BACKEND, "write", 0, 1), GrantFault.READ_ONLY],
    ["OVERFLOW (2^32)", () => g.mapper.map(rw, BACKEND, "read", 2 ** 32, 1), GrantFault.OVERFLOW],
    ["OVERFLOW (negative)", () => g.mapper.map(rw, BACKEND, "read", 0, -1), GrantFault.OVERFLOW],
    ["OVERFLOW (NaN)", () => g.mapper.map(rw, BACKEND, "read", Number.NaN, 1), GrantFault.OVERFLOW],
    [
      "OUT_OF_BOUNDS",
      () => g.mapper.map(rw, BACKEND, "read", FRAME_SIZE, FRAME_SIZE + 1),
      GrantFault.OUT_OF_BOUNDS,
    ],
    [
      "FRAME_OUTSIDE_MEMORY (crosses regions)",
      () => g.mapper.map(crossesRegions, BACKEND, "read", 0, 1),
      GrantFault.FRAME_OUTSIDE_MEMORY,
    ],
    [
      "FRAME_OUTSIDE_MEMORY (past the end)",
      () => g.mapper.map(pastMemory, BACKEND, "read", 0, 1),
      GrantFault.FRAME_OUTSIDE_MEMORY,
    ],
    ["BUSY (map count saturated)", () => g.mapper.map(saturated, BACKEND, "read", 0, 1), GrantFault.BUSY],
  ];
  it.each(cases)("%s", (_name, attempt, expected) => {
    expect(attempt()).toBe(expected);
  });

  it("left every entry's map count as it was (rejections pin nothing)", () => {
    for (const ref of [rw, ro, other, reserved, zeroExtent, crossesRegions, pastMemory]) {
      expect((readRawEntry(g.table, ref).status >>> 5) & 0x7ff).toBe(0);
    }
    expect((readRawEntry(g.table, saturated).status >>> 5) & 0x7ff).toBe(MAP_COUNT_MAX);
  });

  it("maps the whole extent at the right place when everything checks out", () => {
    const view = g.mapper.map(rw, BACKEND, "write", 0, 2 * FRAME_SIZE);
    if (isGrantFault(view)) throw new Error(grantFaultMessage(view));
    expect(view.buffer).toBe(g.memory.regions[0]);
    expect(view.byteOffset).toBe(2 * FRAME_SIZE);
    expect(view.length).toBe(2 * FRAME_SIZE);
    expect(g.mapper.unmap(rw)).toBe(GrantFault.OK);
  });
});

describe("fault codes", () => {
  it("are distinct, named, and each has a message", () => {
    expect(new Set(ALL_GRANT_FAULTS).size).toBe(ALL_GRANT_FAULTS.length);
    for (const code of ALL_GRANT_FAULTS) {
      expect(grantFaultName(code)).not.toBe("UNKNOWN");
      expect(grantFaultMessage(code)).not.toMatch(/unknown/);
    }
    expect(grantFaultName(99)).toBe("UNKNOWN");
    const err = GrantError.fromFault(GrantFault.READ_ONLY, "urb 7 segment 0");
    expect(err.code).toBe("ERR_USBVIRT_GRANT_READ_ONLY");
    expect(err.fault).toBe(GrantFault.READ_ONLY);
    expect(err.message).toMatch(/^urb 7 segment 0: grant is read-only/);
  });

  it("reject storage that is not whole entries, with the size in the message", () => {
    expect(
      () =>
        new GrantTableOwner({
          storage: new SharedArrayBuffer(10),
          memory: GuestMemory.create({ regionFrames: [1] }),
        }),
    ).toThrow(/grant table storage must be 1\.\.65536 entries of 16 bytes, got 10 bytes/);
  });
});
