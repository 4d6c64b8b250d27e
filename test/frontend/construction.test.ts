/**
 * Building a controller: handles and options are checked eagerly, with
 * messages that say which field is wrong; a controller posts its conn-ring
 * requests at once so the backend can report ports.
 */
import { describe, expect, it } from "vitest";
import { createControllerHandles } from "../../src/connection/handles.js";
import { VirtualHostController } from "../../src/frontend/controller.js";
import { UsbSpeed } from "../../src/usb/index.js";
import { FakeBackend } from "./fake-backend.js";

describe("VirtualHostController construction", () => {
  it("rejects options that cannot work, naming the field", () => {
    const handles = createControllerHandles({ ports: 2, memory: 64, scratchFrames: 4 });
    expect(() => new VirtualHostController(handles, { pollsPerYield: 0 })).toThrow(/options\.pollsPerYield/);
    expect(() => new VirtualHostController(createControllerHandles(), { maxSpinMicros: -1 })).toThrow(
      /maxSpinMicros/,
    );
    expect(() => new VirtualHostController({ ...createControllerHandles(), ports: 40 })).toThrow(
      /handles\.ports/,
    );
    expect(
      () =>
        new VirtualHostController({
          ...createControllerHandles({ memory: 64, scratchFrames: 4 }),
          scratchFirstFrame: 60,
          scratchFrames: 8,
        }),
    ).toThrow(/scratch frames/);
    expect(() => new VirtualHostController(null as never)).toThrow(/ControllerHandles/);
  });

  it("refuses a grant table another owner already uses", () => {
    const handles = createControllerHandles();
    const first = new VirtualHostController(handles);
    first.grants.grant(0 as never, 0 as never, 1, true);
    expect(() => new VirtualHostController(handles)).toThrow(/already in use/);
  });

  it("posts its conn-ring requests at once so a connect can be reported", () => {
    const handles = createControllerHandles({ ports: 2 });
    const hc = new VirtualHostController(handles);
    const fake = new FakeBackend(handles);
    fake.plug(2, UsbSpeed.LOW);
    hc.poll();
    expect(hc.portStatus(2)).toMatchObject({ connected: true, speed: UsbSpeed.LOW });
  });
});
