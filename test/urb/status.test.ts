/** The URB status table: Linux errno values, one entry each, peer statuses clamped, per-boundary tables. */
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { PARSE_REJECTIONS } from "../../src/urb/reasons.js";
import {
  createStatusTranslation,
  describeStatus,
  ECONNRESET,
  EINVAL,
  EMSGSIZE,
  ENODEV,
  ENOENT,
  EOVERFLOW,
  EPIPE,
  EPROTO,
  EREMOTEIO,
  ESHUTDOWN,
  ETIMEDOUT,
  EXDEV,
  isKnownStatus,
  OK,
  STATUS_TABLE,
  statusFromPeer,
  type UrbStatus,
} from "../../src/urb/status.js";
import { InvalidOptionError } from "../../src/util/errors.js";

describe("status table", () => {
  it("uses the Linux errno numbers usbif and USB/IP put on the wire", () => {
    expect([OK, ENOENT, EXDEV, ENODEV, EINVAL, EPIPE, EPROTO, EOVERFLOW, EMSGSIZE]).toEqual([
      0, -2, -18, -19, -22, -32, -71, -75, -90,
    ]);
    expect([ECONNRESET, ESHUTDOWN, ETIMEDOUT, EREMOTEIO]).toEqual([-104, -108, -110, -121]);
  });

  it("has one entry per status, each zero or negative, with a unique name and a meaning", () => {
    const names = new Set(STATUS_TABLE.map((info) => info.name));
    expect(names.size).toBe(STATUS_TABLE.length);
    for (const info of STATUS_TABLE) {
      expect(info.status).toBeLessThanOrEqual(0);
      expect(info.meaning.length).toBeGreaterThan(0);
      expect(describeStatus(info.status)).toBe(info);
    }
    expect(describeStatus(EPIPE)?.name).toBe("EPIPE");
    expect(describeStatus(-1)).toBeUndefined();
  });

  it("answers every parse rejection with a status from the table", () => {
    for (const { status } of Object.values(PARSE_REJECTIONS)) expect([EINVAL, EMSGSIZE]).toContain(status);
  });
});

describe("statusFromPeer", () => {
  it("passes known statuses through and turns anything else into -ESHUTDOWN", () => {
    expect(statusFromPeer(-32)).toBe(EPIPE);
    expect(statusFromPeer(0)).toBe(OK);
    expect(statusFromPeer(32)).toBe(ESHUTDOWN); // a positive errno is not a status
    expect(statusFromPeer(-1)).toBe(ESHUTDOWN);
    fc.assert(
      fc.property(fc.integer({ min: -(2 ** 31), max: 2 ** 31 - 1 }), (raw) => {
        const status = statusFromPeer(raw);
        expect(isKnownStatus(status)).toBe(true);
        expect(status === raw || status === ESHUTDOWN).toBe(true);
      }),
    );
  });
});

describe("createStatusTranslation", () => {
  // The shape a later layer uses, e.g. libusb's transfer status enum.
  const fromLibusb = createStatusTranslation(
    "libusb transfer status",
    new Map<string, UrbStatus>([
      ["completed", OK],
      ["stall", EPIPE],
      ["overflow", EOVERFLOW],
      ["no_device", ENODEV],
      ["cancelled", ECONNRESET],
      ["timed_out", ETIMEDOUT],
    ]),
    EPROTO,
  );

  it("maps listed codes and sends unlisted ones to the fallback", () => {
    expect(fromLibusb("stall")).toBe(EPIPE);
    expect(fromLibusb("cancelled")).toBe(ECONNRESET);
    expect(fromLibusb("error")).toBe(EPROTO);
  });

  it("refuses, when built, a table that maps into a number that is not a URB status", () => {
    expect(() => createStatusTranslation("bad", new Map([[1, -5 as UrbStatus]]), EPROTO)).toThrow(
      InvalidOptionError,
    );
    expect(() => createStatusTranslation("bad", new Map<number, UrbStatus>(), 7 as UrbStatus)).toThrow(
      InvalidOptionError,
    );
  });
});
