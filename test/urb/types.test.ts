/** Brand constructors for trusted code: range-checked, failing with a stable code. */
import { describe, expect, it } from "vitest";
import {
  Direction,
  devAddr,
  endpointNum,
  isPortNum,
  portNum,
  TransferType,
  transferTypeOf,
  urbId,
} from "../../src/urb/types.js";
import { InvalidOptionError } from "../../src/util/errors.js";

describe("brand constructors", () => {
  it("accept the full range and refuse one past each end", () => {
    expect(portNum(1)).toBe(1);
    expect(portNum(31)).toBe(31);
    expect(() => portNum(0)).toThrow(InvalidOptionError);
    expect(() => portNum(32)).toThrow(/port must be 1\.\.31, got 32/);
    expect(devAddr(127)).toBe(127);
    expect(() => devAddr(128)).toThrow(InvalidOptionError);
    expect(endpointNum(15)).toBe(15);
    expect(() => endpointNum(16)).toThrow(InvalidOptionError);
    expect(urbId(0xffff_ffff)).toBe(0xffff_ffff);
    expect(() => urbId(-1)).toThrow(InvalidOptionError);
    expect(() => urbId(1.5)).toThrow(InvalidOptionError);
    expect(isPortNum(Number.NaN)).toBe(false);
  });

  it("gives an unlink the transfer type of the URB it cancels", () => {
    expect(
      transferTypeOf({
        kind: "unlink",
        id: urbId(1),
        port: portNum(1),
        device: devAddr(1),
        endpoint: endpointNum(1),
        direction: Direction.Out,
        targetType: TransferType.Interrupt,
        unlinkId: urbId(2),
      }),
    ).toBe(TransferType.Interrupt);
  });
});
