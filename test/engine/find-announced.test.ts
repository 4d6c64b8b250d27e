/**
 * A usbip spec that selects its device is resolved against what the network announces: the one free match
 * becomes a spec naming its server and bus id, with the selector spec's own settings kept and the announced
 * fingerprint pinned when it gives a client certificate only; no match, only held ones, several, and a host
 * it cannot reach as asked each fail with their own code; a bad selector fails before the network is asked.
 */
import { describe, expect, it } from "vitest";
import type { UsbipSelectorSpec } from "../../src/devices/spec.js";
import type { DiscoveredServer, DiscoveryResult } from "../../src/discovery/browser.js";
import type { AnnouncedDevice } from "../../src/discovery/txt-record.js";
import { findAnnounced } from "../../src/engine/find-announced.js";
import { InvalidOptionError } from "../../src/util/errors.js";

const device = (busid: string, serial: string, held = false): AnnouncedDevice => ({
  busid,
  vendorId: 0x1209,
  productId: 1,
  deviceClass: 0xff,
  serial,
  held,
});
const server = (name: string, host: string, devices: AnnouncedDevice[], tls = false): DiscoveredServer => ({
  service: "_usbip._tcp",
  instance: `${name}._usbip._tcp.local`,
  name,
  host,
  port: 3240,
  txt: { version: "1", tls, ...(tls ? { fingerprint: "ef".repeat(32) } : {}), devices, more: 0, dropped: 0 },
});
const network =
  (...servers: DiscoveredServer[]) =>
  async (): Promise<DiscoveryResult> => ({
    servers,
    ignored: { malformed: 0, badTxt: 0, overLimit: 0, badSrv: 0 },
  });

describe("findAnnounced", () => {
  const spec: UsbipSelectorSpec = {
    kind: "usbip",
    select: "serial=ABC",
    timeoutMs: 1234,
    retryMaxMs: 4000,
    discoverMs: 10,
  };

  it("the one free match: its server and bus id, the spec's own settings kept, the selector's left out", async () => {
    let listened = 0;
    const found = await findAnnounced(spec, async (ms) => {
      listened = ms;
      return network(
        server("a", "10.0.0.1", [device("1-1", "XYZ")]),
        server("b", "10.0.0.2", [device("1-4", "ABC")]),
      )();
    });
    expect(listened).toBe(10);
    expect(found.spec).toEqual({
      kind: "usbip",
      host: "10.0.0.2",
      port: 3240,
      busid: "1-4",
      timeoutMs: 1234,
      retryMaxMs: 4000,
    });
    expect(found.candidate.server.name).toBe("b");
  });

  it("a host that requires TLS: the announced fingerprint pinned for a client certificate alone", async () => {
    const tls = { cert: { file: "c.pem" }, key: { file: "c.key" } };
    const found = await findAnnounced(
      { ...spec, tls },
      network(server("s", "10.0.0.3", [device("1-1", "ABC")], true)),
    );
    expect(found.spec.tls).toEqual({ ...tls, serverFingerprints: [`SHA256:${"ef".repeat(32)}`] });
  });

  it("none, held, several and unreachable are errors with their own codes; a bad selector is an option error", async () => {
    await expect(findAnnounced(spec, network())).rejects.toMatchObject({
      code: "ERR_USBVIRT_DEVICE_NOT_ANNOUNCED",
    });
    await expect(
      findAnnounced(spec, network(server("a", "10.0.0.1", [device("1-1", "ABC", true)]))),
    ).rejects.toMatchObject({ code: "ERR_USBVIRT_DEVICE_HELD" });
    await expect(
      findAnnounced(
        spec,
        network(
          server("a", "10.0.0.1", [device("1-1", "ABC")]),
          server("b", "10.0.0.2", [device("1-1", "ABC")]),
        ),
      ),
    ).rejects.toMatchObject({ code: "ERR_USBVIRT_AMBIGUOUS_DEVICE", candidates: { length: 2 } });
    await expect(
      findAnnounced(spec, network(server("s", "10.0.0.3", [device("1-1", "ABC")], true))),
    ).rejects.toMatchObject({
      code: "ERR_USBVIRT_DEVICE_UNREACHABLE",
      message: expect.stringMatching(/mutual TLS/),
    });
    let asked = false;
    await expect(
      findAnnounced({ ...spec, select: "frob=1" }, async () => {
        asked = true;
        return network()();
      }),
    ).rejects.toThrow(InvalidOptionError);
    expect(asked).toBe(false);
  });
});
