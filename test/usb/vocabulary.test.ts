/**
 * src/usb is USB's one vocabulary: a leaf that imports nothing else of usbvirt, and the only place a
 * chapter-9 number (standard request, request type byte, descriptor type) is defined. These tests read the
 * sources, so a new file that defines `bRequest: 9` or its own `USB_REQ_SET_CONFIGURATION` fails here.
 */
import { readFileSync } from "node:fs";
import { join, relative } from "node:path";
import { describe, expect, it } from "vitest";
import { SRC, tsFiles } from "../support/source-files.js";
import { chapter9Definitions, usbImportsOutside } from "./vocabulary-scan.js";

describe("src/usb", () => {
  it("is a leaf: its files import only each other", () => {
    const files = tsFiles(join(SRC, "usb"));
    expect(files.length).toBeGreaterThan(0);
    const found = files.flatMap((f) =>
      usbImportsOutside(readFileSync(f, "utf8")).map((spec) => `${relative(SRC, f)}: ${spec}`),
    );
    expect(found).toEqual([]);
  });

  it("holds every chapter-9 request number: no other file in src/ defines or spells one", () => {
    const files = tsFiles(SRC).filter((f) => !relative(SRC, f).startsWith("usb/"));
    expect(files.length).toBeGreaterThan(50);
    const found = files.flatMap((f) =>
      chapter9Definitions(readFileSync(f, "utf8")).map((hit) => `${relative(SRC, f)}: ${hit}`),
    );
    expect(found).toEqual([]);
  });
});

describe("the scans themselves", () => {
  it("see an import that leaves src/usb, and none that stays", () => {
    expect(
      usbImportsOutside('import { x } from "../urb/types.js";\nimport { y } from "./setup.js";'),
    ).toEqual(["../urb/types.js"]);
    expect(usbImportsOutside('export * from "./speed.js";')).toEqual([]);
    expect(usbImportsOutside('import { EventEmitter } from "node:events";')).toEqual(["node:events"]);
  });

  it("see each way the old code spelled a chapter-9 number", () => {
    const spelled = [
      "const REQ_SET_ADDRESS = 5;",
      "export const USB_REQ_SET_CONFIGURATION = 9;",
      "const SET_ADDRESS = { type: 0x00, request: 5 };",
      "export const USB_DT_DEVICE = 1;",
      "{ bmRequestType: 0x80, bRequest: 6, wValue: 0, wIndex: 0, wLength: 18 }",
      "if (r.requestType === 0x00 && r.request === 9) {}",
      "setup: { bmRequestType: 0x23, bRequest: 3 }",
      "export const StandardRequest = {\n  GET_STATUS: 0x00,",
      "export const DescriptorType = {\n  DEVICE: 0x01,",
      "const RT_CLASS_OTHER_OUT = 0x23;",
      "export const REQUEST_DIR_IN = 0x80;",
      "const SETUP_DIR_IN = 0x80;",
      "export const ENDPOINT_DIR_IN = 0x80;",
    ];
    for (const source of spelled) expect(chapter9Definitions(source), source).not.toEqual([]);
  });

  it("let names, zeroed scratch packets and comments through", () => {
    const fine = [
      "{ bmRequestType: RequestTypeByte.DEVICE_OUT, bRequest: StandardRequest.SET_ADDRESS }",
      "const ZERO = { bmRequestType: 0, bRequest: 0, wValue: 0, wIndex: 0, wLength: 0 };",
      "  bRequest = 0;",
      "/** GET_STATUS(device): bmRequestType 0x80, bRequest 0 */",
      "// bRequest: 9 was SET_CONFIGURATION",
      "if (r.request === StandardRequest.SET_CONFIGURATION) {}",
    ];
    for (const source of fine) expect(chapter9Definitions(source), source).toEqual([]);
  });
});
