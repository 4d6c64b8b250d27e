/**
 * The shared parts of one frontend ↔ backend connection (what xenstore
 * advertises in Xen: ring refs, event channels, grant table). The manager
 * allocates them; every field is a SharedArrayBuffer or a number, so the
 * whole object can be posted to any thread: the VMM's device-model thread
 * builds its VirtualHostController from it, the backend worker its end.
 */

import os from "node:os";
import { createGrantTableStorage } from "../dma-map/grant-table.js";
import { GuestMemory } from "../dma-map/guest-memory.js";
import { createConnRingBuffer } from "../rings/conn-ring.js";
import { Doorbell } from "../rings/doorbell.js";
import { createRingBuffer, type RingGeometry } from "../rings/layout.js";
import { SpinLimiter } from "../rings/spin.js";
import { URB_SLOT_SIZE } from "../urb/layout.js";
import { InvalidOptionError } from "../util/errors.js";

/** The URB ring: 256 slots of one 128-byte request each (usbif allows 16 on a 4 KiB page). */
export const URB_RING_GEOMETRY: RingGeometry = { slots: 256, slotSize: URB_SLOT_SIZE };

export interface ControllerHandles {
  /** Root-hub ports, 1..31. */
  readonly ports: number;
  /** Domain id of the frontend (grant owner) and of the backend (the only domain its grants name). */
  readonly frontendDomid: number;
  readonly backendDomid: number;
  readonly urbRing: SharedArrayBuffer;
  readonly connRing: SharedArrayBuffer;
  /** The frontend waits on this doorbell; the backend rings it. */
  readonly frontendBell: SharedArrayBuffer;
  /** The backend waits on this doorbell; the frontend (and the control plane) ring it. */
  readonly backendBell: SharedArrayBuffer;
  readonly grantTable: SharedArrayBuffer;
  /** Guest memory regions (4 KiB frames), in frame order. */
  readonly memory: readonly SharedArrayBuffer[];
  /**
   * Frames of guest memory the frontend keeps for itself: indirect segment
   * pages and isochronous packet descriptor arrays are written there.
   */
  readonly scratchFirstFrame: number;
  readonly scratchFrames: number;
  /**
   * The spinner cap shared by every thread of the connection (frontend,
   * backend, port workers): at most `maxSpinners` spin at once, so the
   * thread that has the work always finds a core.
   */
  readonly spinLimiter?: SharedArrayBuffer;
  readonly maxSpinners?: number;
  /**
   * Longest spin, µs, of every thread of the connection while its host is contended (see
   * src/rings/contention.ts; default CONTENDED_SPIN_MICROS). Infinity: never cut spins short.
   */
  readonly contendedSpinMicros?: number;
}

/** The connection's shared spinner cap, for the thread that calls it (undefined: no cap). */
export function spinLimiterOf(handles: ControllerHandles): SpinLimiter | undefined {
  return handles.spinLimiter === undefined
    ? undefined
    : new SpinLimiter(handles.spinLimiter, handles.maxSpinners ?? 1);
}

export interface HandlesOptions {
  /** Root-hub ports (default 8). */
  readonly ports?: number;
  /**
   * Guest memory: existing regions (a VMM's RAM as SharedArrayBuffers), or a
   * size in frames to allocate (default 4096 frames = 16 MiB).
   */
  readonly memory?: readonly SharedArrayBuffer[] | number;
  /** Grant table entries (default 4096). */
  readonly grantEntries?: number;
  /** Frames kept for the frontend's own use, at the end of guest memory (default 64). */
  readonly scratchFrames?: number;
  /**
   * Threads of this connection that may spin at once (default: the cores).
   * With emulated devices on the backend's thread the hot path is two threads
   * (frontend, backend); both must spin for a round trip without a wake-up.
   */
  readonly maxSpinners?: number;
  /**
   * Longest spin, µs, while the host is contended (default CONTENDED_SPIN_MICROS, 4): a spinning thread
   * on an oversubscribed host is preempted mid-path and takes the CPU of the threads it waits for.
   * Infinity keeps spinning as on a quiet host.
   */
  readonly contendedSpinMicros?: number;
}

export function createControllerHandles(options: HandlesOptions = {}): ControllerHandles {
  const ports = options.ports ?? 8;
  if (!Number.isInteger(ports) || ports < 1 || ports > 31) {
    throw new InvalidOptionError(`options.ports must be an integer in [1, 31], got ${String(ports)}`);
  }
  const memoryOption = options.memory ?? 4096;
  const memory =
    typeof memoryOption === "number"
      ? GuestMemory.create({ regionFrames: [memoryOption] })
      : new GuestMemory({ regions: memoryOption });
  const spinCap = options.contendedSpinMicros;
  if (spinCap !== undefined && (typeof spinCap !== "number" || Number.isNaN(spinCap) || spinCap < 0)) {
    throw new InvalidOptionError(
      `options.contendedSpinMicros must be a non-negative number (Infinity: never cut short), got ${String(spinCap)}`,
    );
  }
  const scratchFrames = options.scratchFrames ?? 64;
  if (!Number.isInteger(scratchFrames) || scratchFrames < 1 || scratchFrames >= memory.frameCount) {
    throw new InvalidOptionError(
      `options.scratchFrames must be an integer in [1, ${memory.frameCount - 1}], got ${String(scratchFrames)}`,
    );
  }
  return {
    ports,
    frontendDomid: 1,
    backendDomid: 0,
    urbRing: createRingBuffer(URB_RING_GEOMETRY),
    connRing: createConnRingBuffer(),
    frontendBell: Doorbell.create(),
    backendBell: Doorbell.create(),
    grantTable: createGrantTableStorage({ entries: options.grantEntries ?? 4096 }),
    memory: memory.regions,
    scratchFirstFrame: memory.frameCount - scratchFrames,
    scratchFrames,
    spinLimiter: SpinLimiter.create(),
    maxSpinners: options.maxSpinners ?? os.availableParallelism(),
    ...(options.contendedSpinMicros === undefined
      ? {}
      : { contendedSpinMicros: options.contendedSpinMicros }),
  };
}
