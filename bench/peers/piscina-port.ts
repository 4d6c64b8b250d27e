/** Peer (c), port task: piscina's one "port" thread owns the loopback device; a task is one URB. */
import { openLoopback, type PeerResult, type PeerUrb, submitToDevice } from "./wire.js";

const device = await openLoopback();

export default function portTask(urb: PeerUrb): Promise<PeerResult> {
  return submitToDevice(device, urb);
}
