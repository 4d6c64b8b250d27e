/**
 * Backend side of the cross-thread test: builds its own GuestMemory and
 * GrantMapper over SABs from the main thread, maps a grant for writing,
 * writes through the view, and unmaps when told to.
 */
import { parentPort, workerData } from "node:worker_threads";
import {
  type DomId,
  GrantMapper,
  type GrantRef,
  GuestMemory,
  grantFaultName,
  isGrantFault,
} from "../../src/dma-map/index.js";

interface MapJob {
  readonly regions: SharedArrayBuffer[];
  readonly table: SharedArrayBuffer;
  readonly ref: GrantRef;
  readonly domid: DomId;
  readonly length: number;
}

const job = workerData as MapJob;
const mapper = new GrantMapper({ table: job.table, memory: new GuestMemory({ regions: job.regions }) });
const view = mapper.map(job.ref, job.domid, "write", 0, job.length);
if (isGrantFault(view)) {
  parentPort!.postMessage({ fault: grantFaultName(view) });
} else {
  for (let i = 0; i < view.length; i++) view[i] = (i * 7 + 1) & 0xff;
  parentPort!.postMessage({ mapped: true });
  parentPort!.once("message", () => {
    parentPort!.postMessage({ unmapped: grantFaultName(mapper.unmap(job.ref)) });
  });
}
