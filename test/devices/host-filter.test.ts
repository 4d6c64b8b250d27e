/**
 * The device filter (src/devices/host/filter.ts): usbredir's rule strings and the readable form parse to
 * the same rules, the first matching rule decides per view (device class, then each interface class),
 * hubs are denied by default, and the default verdict is deny only when an allow rule was given.
 * Examples first, then properties (fast-check) with the expected verdict built alongside the input.
 */
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { allowedExports, checkExplicitDevices } from "../../src/cli/serve-hosts.js";
import {
  type DeviceFilter,
  type FilterableDevice,
  type FilterRule,
  filterFromLists,
  formatRule,
  formatUsbredirRule,
  judge,
  parseRule,
  parseRules,
} from "../../src/devices/host/filter.js";
import { InvalidOptionError } from "../../src/util/errors.js";

const keyboard: FilterableDevice = {
  vendorId: 0x046d,
  productId: 0xc31c,
  deviceClass: 0,
  portPath: "1-2",
  bcdDevice: 0x6400,
  interfaceClasses: [3, 3],
};
const token: FilterableDevice = {
  vendorId: 0x1050,
  productId: 0x0407,
  deviceClass: 0,
  portPath: "1-3",
  serial: "YK1",
  bcdDevice: 0x0512,
  interfaceClasses: [3, 0x0b],
};
const stick: FilterableDevice = {
  vendorId: 0x0781,
  productId: 0x5567,
  deviceClass: 0,
  portPath: "1-4.1",
  serial: "SD42",
  bcdDevice: 0x0100,
  interfaceClasses: [8],
};
const hub: FilterableDevice = {
  vendorId: 0x05e3,
  productId: 0x0608,
  deviceClass: 9,
  portPath: "1-4",
  interfaceClasses: [9],
};

const rules = (text: string): DeviceFilter => ({ rules: parseRules(text) });
const hubby = (d: FilterableDevice) => d.deviceClass === 9 || (d.interfaceClasses ?? []).includes(9);

describe("filter rules: parsing", () => {
  it("reads usbredir's form: C numbers, -1 = any, 1 allow / 0 deny, rules joined by |", () => {
    expect(parseRules("0x03,-1,-1,-1,0|-1,0x1050,1031,0x0512,1")).toEqual([
      { action: "deny", class: 3 },
      { action: "allow", vendorId: 0x1050, productId: 1031, bcdDevice: 0x0512 },
    ]);
  });

  it("reads the readable form: VID:PID (hex, * = any), paths, serial=, class= by number or name, bcd=", () => {
    expect(
      parseRules(
        "deny class=hid | allow 1050:*,serial=YK1 | allow 1-4.1 | deny class=0x08,bcd=0x0100 | allow *",
      ),
    ).toEqual([
      { action: "deny", class: 3 },
      { action: "allow", vendorId: 0x1050, serial: "YK1" },
      { action: "allow", busPort: "1-4.1" },
      { action: "deny", class: 8, bcdDevice: 0x0100 },
      { action: "allow" },
    ]);
    expect(parseRule("allow 1209:0001@1-1.2")).toEqual({
      action: "allow",
      vendorId: 0x1209,
      productId: 1,
      busPort: "1-1.2",
    });
  });

  it("says what is wrong with a rule, quoting it", () => {
    expect(() => parseRule("0x03,-1,-1,-1,2")).toThrow(
      'filter rule "0x03,-1,-1,-1,2": the last field is 1 (allow) or 0 (deny), not 2',
    );
    expect(() => parseRule("0x100,-1,-1,-1,1")).toThrow(/class must be -1 or 0\.\.0xff, not 256/);
    expect(() => parseRule("deny class=keyboards")).toThrow(
      /class must be 0\.\.0xff or one of audio, .*hid.*, not "keyboards"/,
    );
    expect(() => parseRule("block 1209:0001")).toThrow(/expected "allow SEL", "deny SEL" or a usbredir rule/);
    expect(() => parseRule("deny")).toThrow(/expected "allow SEL"/);
    expect(() => parseRule("deny colour=red")).toThrow(/unknown key "colour"/);
    expect(() => parseRule("allow 12345:1")).toThrow(/vendor id must be 1-4 hex digits/);
  });

  it("a class name is looked up among the class names only, never on an object's prototype", () => {
    for (const name of ["constructor", "toString", "__proto__", "hasOwnProperty", "valueOf", "CONSTRUCTOR"]) {
      for (const action of ["deny", "allow"]) {
        const text = `${action} class=${name}`;
        let thrown: unknown;
        try {
          parseRule(text);
        } catch (err) {
          thrown = err;
        }
        expect(thrown, text).toBeInstanceOf(InvalidOptionError);
        expect((thrown as Error).message).toMatch(
          `filter rule "${text}": class must be 0..0xff or one of audio, `,
        );
        expect((thrown as Error).message.endsWith(`, not "${name}"`)).toBe(true);
      }
    }
    // The same through serve's lists, and a real name still reads.
    expect(() => filterFromLists({ deny: ["class=constructor"] })).toThrow(/class must be/);
    expect(parseRule("deny class=HID")).toEqual({ action: "deny", class: 3 });
  });
});

describe("filter rules: verdicts", () => {
  it("usbredir's own example: no HID, everything else (a composite device with a HID interface is refused)", () => {
    const f = rules("0x03,-1,-1,-1,0|-1,-1,-1,-1,1");
    expect(judge(f, keyboard)).toEqual({ allowed: false, why: "rule 1: deny class=0x03 (class 0x03)" });
    expect(judge(f, token).allowed).toBe(false);
    expect(judge(f, stick)).toEqual({ allowed: true, why: "rule 2: allow *" });
  });

  it("first match wins: an allow of one device before a class deny lets that device through", () => {
    const f = rules("allow 1050:0407|deny class=hid|allow *");
    expect(judge(f, token).allowed).toBe(true);
    expect(judge(f, keyboard).allowed).toBe(false);
    expect(judge(rules("deny class=hid|allow 1050:0407|allow *"), token).allowed).toBe(false);
  });

  it("deny alone is a deny list: everything else passes", () => {
    const f = filterFromLists({ deny: ["class=hid"] });
    expect(judge(f, stick).allowed).toBe(true);
    expect(judge(f, keyboard).allowed).toBe(false);
  });

  it("allow alone is an allow list: nothing else passes", () => {
    const f = filterFromLists({ allow: ["serial=SD42"] });
    expect(judge(f, stick).allowed).toBe(true);
    expect(judge(f, keyboard)).toEqual({ allowed: false, why: "no allow rule matched (class 0x03)" });
  });

  it("hubs are denied by default, and a rule before the default can allow them", () => {
    expect(judge({ rules: [] }, hub)).toEqual({
      allowed: false,
      why: "the built-in rule: deny hubs (class 0x09)",
    });
    expect(judge({ rules: [] }, stick).allowed).toBe(true);
    expect(judge(rules("9,-1,-1,-1,1"), hub).allowed).toBe(true);
    expect(judge(rules("allow class=hub"), hub).allowed).toBe(true);
    // "allow *" is not a decision about hubs: only a rule that names class 9 is.
    expect(judge(rules("allow *"), hub).allowed).toBe(false);
    expect(judge(rules("allow 05e3:0608"), hub).allowed).toBe(false);
  });

  it("bcdDevice, serial and path rules match only their device", () => {
    expect(judge(rules("deny bcd=0x0100"), stick).allowed).toBe(false);
    expect(judge(rules("deny bcd=0x0100"), token).allowed).toBe(true);
    expect(judge(rules("deny serial=YK1"), token).allowed).toBe(false);
    expect(judge(rules("deny path=1-4.1"), stick).allowed).toBe(false);
    expect(judge(rules("deny 1-4.1"), keyboard).allowed).toBe(true);
  });

  it("serve's start: explicit host devices are judged, --allow exports what it matches and the filter allows", () => {
    const rows = [keyboard, token, stick, hub, { ...hub, portPath: "usb1" }];
    const f = filterFromLists({ deny: ["class=hid"], allow: ["*"] });
    expect(() => checkExplicitDevices([{ kind: "host", vendorId: 0x046d }], f, rows)).toThrow(
      "host device 046d:* (1-2, 046d:c31c) is denied by the filter: rule 1: deny class=0x03 (class 0x03)",
    );
    expect(() => checkExplicitDevices([{ kind: "host", busPort: "1-4" }], { rules: [] }, rows)).toThrow(
      /denied by the filter: the built-in rule: deny hubs/,
    );
    // Not plugged in: nothing to judge yet.
    expect(() => checkExplicitDevices([{ kind: "host", vendorId: 0xdead }], f, rows)).not.toThrow();
    expect(allowedExports(["*"], f, rows, [])).toEqual([{ kind: "host", busPort: "1-4.1" }]);
    expect(
      allowedExports(["class=storage"], filterFromLists({ allow: ["class=storage"] }), rows, []),
    ).toEqual([{ kind: "host", busPort: "1-4.1" }]);
  });
});

const id16 = fc.option(fc.integer({ min: 0, max: 0xffff }), { nil: undefined });
const cls = fc.option(fc.integer({ min: 0, max: 0xff }), { nil: undefined });
const ruleArb: fc.Arbitrary<FilterRule> = fc
  .record({
    action: fc.constantFrom("allow" as const, "deny" as const),
    class: cls,
    vendorId: id16,
    productId: id16,
    bcdDevice: id16,
    serial: fc.option(fc.stringMatching(/^[A-Z0-9]{1,8}$/), { nil: undefined }),
    busPort: fc.option(fc.stringMatching(/^[1-4]-[1-4](\.[1-4]){0,2}$/), { nil: undefined }),
  })
  .map(
    (r) => Object.fromEntries(Object.entries(r).filter(([, v]) => v !== undefined)) as unknown as FilterRule,
  );
/** Devices drawn from a small space so that rules often match them. */
const deviceArb: fc.Arbitrary<FilterableDevice> = fc.record({
  vendorId: fc.constantFrom(0x1209, 0x1050),
  productId: fc.constantFrom(1, 2),
  deviceClass: fc.constantFrom(0, 0xef, 3, 9, 0xff),
  portPath: fc.constantFrom("1-1", "1-2.1"),
  bcdDevice: fc.constantFrom(0x0100, 0x0200),
  serial: fc.constantFrom("A", "B"),
  interfaceClasses: fc.array(fc.constantFrom(3, 8, 9, 0xff), { maxLength: 3 }),
});

describe("filter rules: properties", () => {
  it("the readable form and the usbredir form read back what they wrote", () => {
    fc.assert(
      fc.property(ruleArb, (r) => {
        expect(parseRule(formatRule(r))).toEqual(r);
        const u = formatUsbredirRule(r);
        if (u !== null) expect(parseRule(u)).toEqual(r);
      }),
    );
  });

  it("usbredir numbers may be written in hex or decimal: the same rule", () => {
    fc.assert(
      fc.property(
        fc.tuple(
          fc.integer({ min: -1, max: 0xff }),
          fc.integer({ min: -1, max: 0xffff }),
          fc.integer({ min: -1, max: 0xffff }),
          fc.integer({ min: -1, max: 0xffff }),
          fc.boolean(),
        ),
        fc.array(fc.boolean(), { minLength: 4, maxLength: 4 }),
        ([c, v, p, b, allow], hexes) => {
          const write = (n: number, i: number) =>
            n === -1 ? "-1" : hexes[i] ? `0x${n.toString(16)}` : String(n);
          const text = `${write(c, 0)},${write(v, 1)},${write(p, 2)},${write(b, 3)},${allow ? 1 : 0}`;
          const r = parseRule(text);
          expect(r.action).toBe(allow ? "allow" : "deny");
          expect([r.class ?? -1, r.vendorId ?? -1, r.productId ?? -1, r.bcdDevice ?? -1]).toEqual([
            c,
            v,
            p,
            b,
          ]);
        },
      ),
    );
  });

  it("first match wins: a leading rule that names the device by vid:pid decides, whatever follows", () => {
    fc.assert(
      fc.property(
        deviceArb,
        fc.array(ruleArb, { maxLength: 6 }),
        fc.constantFrom("allow" as const, "deny" as const),
        (d, rest, action) => {
          fc.pre(!hubby(d)); // hubs answer only to rules that name class 9
          const lead: FilterRule = { action, vendorId: d.vendorId, productId: d.productId };
          expect(judge({ rules: [lead, ...rest] }, d).allowed).toBe(action === "allow");
        },
      ),
    );
  });

  it("rules after an 'allow *' or a 'deny *' change nothing", () => {
    fc.assert(
      fc.property(
        deviceArb,
        fc.array(ruleArb, { maxLength: 4 }),
        fc.array(ruleArb, { maxLength: 4 }),
        fc.constantFrom("allow" as const, "deny" as const),
        (d, before, after, action) => {
          fc.pre(!hubby(d));
          const base = judge({ rules: [...before, { action }] }, d);
          expect(judge({ rules: [...before, { action }, ...after] }, d)).toEqual(base);
        },
      ),
    );
  });

  it("a deny list only ever denies more: adding a deny rule never lets a denied device through", () => {
    fc.assert(
      fc.property(
        deviceArb,
        fc.array(
          ruleArb.map((r) => ({ ...r, action: "deny" as const })),
          { maxLength: 5 },
        ),
        ruleArb,
        (d, denies, extra) => {
          const before = judge({ rules: denies }, d).allowed;
          const after = judge({ rules: [...denies, { ...extra, action: "deny" }] }, d).allowed;
          if (!before) expect(after).toBe(false);
          // With no rule at all, only hubs are refused.
          expect(judge({ rules: [] }, d).allowed).toBe(!hubby(d));
        },
      ),
    );
  });

  it("a device passes only if every view (device class unless 0x00/0xef, each interface) passes alone", () => {
    fc.assert(
      fc.property(deviceArb, fc.array(ruleArb, { maxLength: 6 }), (d, rs) => {
        const f = { rules: rs };
        const views = [
          ...((d.deviceClass !== 0 && d.deviceClass !== 0xef) || (d.interfaceClasses ?? []).length === 0
            ? [d.deviceClass]
            : []),
          ...(d.interfaceClasses ?? []),
        ];
        // Each view alone: a device whose only class is that view's (as an interface of a class-0 device).
        const each = views.map((c) => judge(f, { ...d, deviceClass: 0, interfaceClasses: [c] }).allowed);
        expect(judge(f, d).allowed).toBe(each.every((x) => x));
      }),
    );
  });
});
