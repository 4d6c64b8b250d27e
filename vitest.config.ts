/**
 * Two vitest projects, split by speed and by what a test needs from the machine:
 * - unit: pure and single-thread tests (codecs, parse gate, rings, grants, frontend against a fake backend,
 *   port service, devices on their own). No worker thread, child process or socket: test/support/unit-setup.ts
 *   makes each of those throw here, so a test that needs one cannot land in this list by mistake.
 *   `npm run test:unit`; under 20 s on a 2-core machine.
 * - integration: everything else (real worker threads, TCP, umockdev, QEMU, the SPIN model, fuzz, soak).
 * `npm test` (and `vitest run`) runs both. A test file belongs to exactly one: integration is "not unit".
 */
import { defineConfig } from "vitest/config";

const UNIT = [
  "test/backend/**/*.test.ts",
  "test/cli/config.test.ts",
  "test/cli/config-schema-file.test.ts",
  "test/cli/serve-retries.test.ts",
  "test/devices/descriptors.test.ts",
  "test/discovery/txt-record.test.ts",
  "test/devices/enumeration.test.ts",
  "test/devices/host-filter.test.ts",
  "test/devices/keyboard.test.ts",
  "test/devices/loopback.test.ts",
  "test/devices/spec-schema.test.ts",
  "test/devices/storage.test.ts",
  "test/dma-map/frame-arithmetic.test.ts",
  "test/dma-map/grant-mapper.property.test.ts",
  "test/dma-map/grant-table.test.ts",
  "test/dma-map/guest-memory.test.ts",
  "test/dma-map/segments.test.ts",
  "test/frontend/**/*.test.ts",
  "test/host/select-and-status.test.ts",
  "test/host/usb-optional.test.ts",
  "test/index.test.ts",
  "test/layers.test.ts",
  "test/network-face/log.test.ts",
  "test/network-face/share.test.ts",
  "test/port/**/*.test.ts",
  "test/rings/conn-ring.test.ts",
  "test/rings/contention.test.ts",
  "test/rings/doorbell.test.ts",
  "test/rings/model-constants.test.ts",
  "test/rings/ring-edges.test.ts",
  "test/rings/service-loop.test.ts",
  "test/support/tools.test.ts",
  "test/urb/**/*.test.ts",
  "test/usbip/allowlist.test.ts",
  "test/usbip/protocol.test.ts",
  "test/usbip/urb-reader.test.ts",
  "test/usbredir/reader.test.ts",
  "test/usbredir/vmm-filter.test.ts",
  "test/toolstack/state-store.test.ts",
  "test/util/**/*.test.ts",
];

export default defineConfig({
  test: {
    testTimeout: 60_000,
    hookTimeout: 30_000,
    // Worker-thread tests spin; two cores are all CI has.
    maxWorkers: 2,
    projects: [
      {
        extends: true,
        test: {
          name: "unit",
          include: UNIT,
          setupFiles: ["test/support/unit-setup.ts"],
          // One module graph per vitest worker, not per file: half the wall time (import and transform
          // dominated). Unit tests build their own state (rigs, rings, devices) and restore fake timers.
          isolate: false,
        },
      },
      {
        extends: true,
        test: { name: "integration", include: ["test/**/*.test.ts"], exclude: UNIT },
      },
    ],
  },
});
