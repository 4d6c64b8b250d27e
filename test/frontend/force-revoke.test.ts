/**
 * GrantTableOwner.forceRevoke: the control plane's way to take back grants a
 * dead backend still holds mapped (its map counts can never drop again).
 * Lives with the frontend tests because the frontend is its only caller.
 */
import { describe, expect, it } from "vitest";
import { GrantFault } from "../../src/dma-map/grant-fault.js";
import { GrantMapper } from "../../src/dma-map/grant-mapper.js";
import { createGrantTableStorage, GrantTableOwner } from "../../src/dma-map/grant-table.js";
import { GuestMemory } from "../../src/dma-map/guest-memory.js";
import { domId, guestFrame } from "../../src/dma-map/types.js";

function setup() {
  const memory = GuestMemory.create({ regionFrames: [16] });
  const storage = createGrantTableStorage({ entries: 4 });
  const owner = new GrantTableOwner({ storage, memory });
  const mapper = new GrantMapper({ table: storage, memory });
  return { owner, mapper };
}

describe("GrantTableOwner.forceRevoke", () => {
  it("takes back a grant the backend left mapped and reports the discarded map count", () => {
    const { owner, mapper } = setup();
    const backend = domId(0);
    const ref = owner.grant(backend, guestFrame(2), 1, false);
    expect(mapper.map(ref, backend, "write", 0, 16)).toBeInstanceOf(Uint8Array);
    expect(mapper.map(ref, backend, "read", 0, 16)).toBeInstanceOf(Uint8Array);
    expect(owner.tryRevoke(ref)).toBe(false);

    expect(owner.forceRevoke(ref)).toBe(2);
    expect(owner.isGranted(ref)).toBe(false);
    expect(owner.freeCount).toBe(4);
    // The dead backend's late map attempts now fail: the entry is no longer permitted.
    expect(mapper.map(ref, backend, "read", 0, 16)).toBe(GrantFault.NOT_GRANTED);
  });

  it("returns 0 for an unmapped grant and puts the ref back for reuse", () => {
    const { owner } = setup();
    const ref = owner.grant(domId(0), guestFrame(1), 2, true);
    expect(owner.forceRevoke(ref)).toBe(0);
    expect(owner.grant(domId(0), guestFrame(3), 1, true)).toBe(ref);
  });

  it("refuses a ref that is not granted", () => {
    const { owner } = setup();
    const ref = owner.grant(domId(0), guestFrame(1), 1, true);
    owner.forceRevoke(ref);
    expect(() => owner.forceRevoke(ref)).toThrow(/not granted/);
  });
});
