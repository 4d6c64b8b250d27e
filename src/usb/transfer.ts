/**
 * Transfer kinds, directions and endpoint addresses (USB 2.0 §5.4–5.8, §9.6.6). One vocabulary for every
 * layer: a transfer's kind is a `TransferKind` word everywhere in the engine, and each wire format that
 * numbers kinds differently converts at its boundary with one function each:
 * - USB's own number (endpoint bmAttributes bits 0..1, also libusb's and USB/IP's): `endpointTypeOf` /
 *   `transferKindOfEndpointType`, here;
 * - usbif's pipe type bits (0 iso, 1 interrupt, 2 control, 3 bulk): src/urb/pipe.ts.
 */

export type TransferKind = "control" | "bulk" | "interrupt" | "isochronous";

/** Endpoint bmAttributes bits 0..1 (§9.6.6 Table 9-13); libusb's transfer types use the same numbers. */
export const EndpointType = { CONTROL: 0, ISOCHRONOUS: 1, BULK: 2, INTERRUPT: 3 } as const;
export type EndpointType = (typeof EndpointType)[keyof typeof EndpointType];
export const ENDPOINT_TYPE_MASK = 0x03;

const KIND_BY_ENDPOINT_TYPE: readonly TransferKind[] = ["control", "isochronous", "bulk", "interrupt"];

/** The kind an endpoint's bmAttributes names (only bits 0..1 are read). */
export function transferKindOfEndpointType(bmAttributes: number): TransferKind {
  return KIND_BY_ENDPOINT_TYPE[bmAttributes & ENDPOINT_TYPE_MASK]!;
}

export function endpointTypeOf(kind: TransferKind): EndpointType {
  switch (kind) {
    case "control":
      return EndpointType.CONTROL;
    case "isochronous":
      return EndpointType.ISOCHRONOUS;
    case "bulk":
      return EndpointType.BULK;
    case "interrupt":
      return EndpointType.INTERRUPT;
  }
}

/** Endpoint address bit 7 (§9.6.6): set for IN (device to host). */
export const ENDPOINT_DIR_IN = 0x80;
/** Endpoint address bits 0..3: the endpoint number. */
export const ENDPOINT_NUMBER_MASK = 0x0f;
/** Endpoints per direction, 0..15. */
export const ENDPOINTS_PER_DIRECTION = 16;

/** The endpoint address (bEndpointAddress) of endpoint `number` in direction IN or OUT. */
export function endpointAddress(number: number, directionIn: boolean): number {
  return (number & ENDPOINT_NUMBER_MASK) | (directionIn ? ENDPOINT_DIR_IN : 0);
}

export function endpointNumberOf(address: number): number {
  return address & ENDPOINT_NUMBER_MASK;
}

export function endpointIsIn(address: number): boolean {
  return (address & ENDPOINT_DIR_IN) !== 0;
}

/**
 * A dense index for per-endpoint tables, as Linux's and QEMU's ep_info arrays: OUT endpoints 0..15, IN
 * endpoints 16..31 (endpoint 0 has one index per direction).
 */
export function endpointIndex(address: number): number {
  return (address & ENDPOINT_NUMBER_MASK) + (endpointIsIn(address) ? ENDPOINTS_PER_DIRECTION : 0);
}

/** The endpoint address at ep_info index `index` (0..31): the inverse of endpointIndex. */
export function endpointAddressOfIndex(index: number): number {
  return endpointAddress(index & ENDPOINT_NUMBER_MASK, (index & ENDPOINTS_PER_DIRECTION) !== 0);
}
