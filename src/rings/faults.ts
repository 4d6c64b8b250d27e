/**
 * Sticky protocol errors of a ring. An impossible index or id from the peer
 * latches one of these in the ring's shared error word; the endpoint stops
 * consuming until the owner resets the ring (Xen's "ring error" in
 * xen-usb.c / xen-hcd.c: a hostile peer is cut off, never trusted again).
 */
export const RingFault = {
  NONE: 0,
  /** Backend saw req_prod further ahead than the slots the frontend may fill. */
  REQUEST_PROD_OVERFLOW: 1,
  /** Frontend saw rsp_prod ahead of the requests it has published. */
  RESPONSE_PROD_OVERFLOW: 2,
  /** Frontend got a response whose id it has not got in flight. */
  RESPONSE_ID_NOT_IN_FLIGHT: 3,
  /** A layer above found the peer's ring content impossible (e.g. a conn-ring port out of range). */
  PEER_PROTOCOL_VIOLATION: 4,
} as const;
export type RingFault = (typeof RingFault)[keyof typeof RingFault];

const MESSAGES: Record<RingFault, string> = {
  [RingFault.NONE]: "no error",
  [RingFault.REQUEST_PROD_OVERFLOW]: "request producer index ahead of the free slots",
  [RingFault.RESPONSE_PROD_OVERFLOW]: "response producer index ahead of the published requests",
  [RingFault.RESPONSE_ID_NOT_IN_FLIGHT]: "response id not in flight",
  [RingFault.PEER_PROTOCOL_VIOLATION]: "peer wrote impossible ring content",
};

export function ringFaultMessage(fault: number): string {
  return MESSAGES[fault as RingFault] ?? `unknown ring fault ${fault}`;
}
