/**
 * The usbif pipe word (Xen xen/include/public/io/usbif.h, `usbif_pipe*` macros): which port, device,
 * endpoint, direction and transfer type a URB targets, and whether it is an unlink request.
 *
 *   31 30 29 ........ 19 18   15 14        8  7   6   5  4    0
 *  +-----+---------------+-------+-----------+---+---+---+------+
 *  | type|   reserved 0  |  ep   |  devaddr  |dir| 0 |unl| port |
 *  +-----+---------------+-------+-----------+---+---+---+------+
 *   type: 0 iso, 1 interrupt, 2 control, 3 bulk; dir: 1 = IN; port 1..31.
 *
 * The field getters allocate nothing (the parse gate uses them); `decodePipe` builds a `Pipe` object for
 * code that wants one. Neither validates: the parse gate checks reserved bits and the port range.
 */
import type { DevAddr, EndpointNum, PortNum } from "./types.js";
import { Direction, TransferType } from "./types.js";

const PORT_MASK = 0x1f;
const UNLINK_BIT = 1 << 5;
const DIR_IN_BIT = 1 << 7;
const DEVADDR_SHIFT = 8;
const DEVADDR_MASK = 0x7f;
const ENDPOINT_SHIFT = 15;
const ENDPOINT_MASK = 0xf;
const TYPE_SHIFT = 30;
const TYPE_MASK = 0x3;

const PIPE_USED_BITS =
  PORT_MASK |
  UNLINK_BIT |
  DIR_IN_BIT |
  (DEVADDR_MASK << DEVADDR_SHIFT) |
  (ENDPOINT_MASK << ENDPOINT_SHIFT) |
  (TYPE_MASK << TYPE_SHIFT);

/** Bits of the pipe word that must be zero: bit 6 and bits 19..29. */
export const PIPE_RESERVED_MASK = ~PIPE_USED_BITS >>> 0;
if (PIPE_RESERVED_MASK !== 0x3ff80040) throw new Error("urb pipe: reserved mask");

/** The decoded pipe word. */
export interface Pipe {
  readonly port: PortNum;
  readonly unlink: boolean;
  readonly direction: Direction;
  readonly device: DevAddr;
  readonly endpoint: EndpointNum;
  readonly type: TransferType;
}

export function pipePort(pipe: number): number {
  return pipe & PORT_MASK;
}

export function pipeIsUnlink(pipe: number): boolean {
  return (pipe & UNLINK_BIT) !== 0;
}

export function pipeDirection(pipe: number): Direction {
  return (pipe & DIR_IN_BIT) !== 0 ? Direction.In : Direction.Out;
}

export function pipeDevice(pipe: number): DevAddr {
  return ((pipe >>> DEVADDR_SHIFT) & DEVADDR_MASK) as DevAddr;
}

export function pipeEndpoint(pipe: number): EndpointNum {
  return ((pipe >>> ENDPOINT_SHIFT) & ENDPOINT_MASK) as EndpointNum;
}

export function pipeType(pipe: number): TransferType {
  return ((pipe >>> TYPE_SHIFT) & TYPE_MASK) as TransferType;
}

export function pipeReservedBits(pipe: number): number {
  return (pipe & PIPE_RESERVED_MASK) >>> 0;
}

/**
 * Pack pipe fields into the u32 word, from scalars so the request encoder allocates nothing. Each field
 * is masked to its width so one cannot spill into another.
 */
export function pipeWord(
  port: number,
  unlink: boolean,
  direction: Direction,
  device: number,
  endpoint: number,
  type: TransferType,
): number {
  return (
    ((port & PORT_MASK) |
      (unlink ? UNLINK_BIT : 0) |
      (direction === Direction.In ? DIR_IN_BIT : 0) |
      ((device & DEVADDR_MASK) << DEVADDR_SHIFT) |
      ((endpoint & ENDPOINT_MASK) << ENDPOINT_SHIFT) |
      ((type & TYPE_MASK) << TYPE_SHIFT)) >>>
    0
  );
}

/** Pack a `Pipe` into its u32 word (fields masked to their widths, see `pipeWord`). */
export function encodePipe(pipe: Pipe): number {
  return pipeWord(pipe.port, pipe.unlink, pipe.direction, pipe.device, pipe.endpoint, pipe.type);
}

/**
 * Unpack a pipe word. The port is returned as found (it may be 0, which no valid pipe has): check with
 * `isPortNum` or go through the parse gate before trusting it.
 */
export function decodePipe(pipe: number): Pipe {
  return {
    port: pipePort(pipe) as PortNum,
    unlink: pipeIsUnlink(pipe),
    direction: pipeDirection(pipe),
    device: pipeDevice(pipe),
    endpoint: pipeEndpoint(pipe),
    type: pipeType(pipe),
  };
}

// Keep the enum and the wire in step: usbif.h numbers the types this way.
if (TransferType.Isochronous !== 0 || TransferType.Interrupt !== 1 || TransferType.Control !== 2) {
  throw new Error("urb pipe: transfer type numbering");
}
