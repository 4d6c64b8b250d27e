/**
 * The chapter-9 standard requests an emulated device answers on endpoint 0 (USB 2.0 §9.4), served from
 * its built descriptors and its endpoint state: GET_DESCRIPTOR of every type (device, configuration,
 * string, device_qualifier, other_speed_configuration, BOS; interface-level ones through the device class),
 * GET_STATUS (§9.4.5), GET_CONFIGURATION (§9.4.2), GET_INTERFACE (§9.4.4),
 * SET_FEATURE / CLEAR_FEATURE (§9.4.1, §9.4.9). A request error is a STALL: -EPIPE (§9.2.7).
 * SET_CONFIGURATION and SET_INTERFACE change the device's transfers too and stay with the device base.
 */

import { EPIPE, OK, type UrbStatus } from "../../urb/status.js";
import {
  DescriptorType,
  ENDPOINT_DIR_IN,
  ENDPOINT_NUMBER_MASK,
  Feature,
  RECIPIENT_DEVICE,
  RECIPIENT_ENDPOINT,
  RECIPIENT_INTERFACE,
  RECIPIENT_MASK,
  REQUEST_DIR_IN,
  type SetupPacket,
  STATUS_HALTED,
  STATUS_LENGTH,
  STATUS_SELF_POWERED,
  StandardRequest,
} from "../../usb/index.js";
import type { DeviceDescriptors } from "./descriptors.js";
import type { EndpointState } from "./endpoint-state.js";

/**
 * What a class/vendor (or interface-level standard) control request handler answers: the IN data stage
 * bytes (truncated to wLength by the base), or a status (OK for an accepted no-data/OUT request, -EPIPE
 * for a request error).
 */
export type ControlReply = Uint8Array | UrbStatus;

/** The device a standard request is answered for: built once per device, never per request. */
export interface StandardRequestTarget {
  readonly descriptors: DeviceDescriptors;
  readonly state: EndpointState;
  /** GET_DESCRIPTOR with recipient interface (the device class's); null stalls. */
  interfaceDescriptor(interfaceNumber: number, type: number, index: number): Uint8Array | null;
  /** CLEAR_FEATURE(ENDPOINT_HALT) on `address`, as the device's clearHalt does it. */
  clearHalt(address: number): UrbStatus;
  /** SET_FEATURE(ENDPOINT_HALT) on an active endpoint: halt it and fail its transfers in flight. */
  halt(address: number): void;
}

/** The answer to a standard request other than SET_CONFIGURATION / SET_INTERFACE. */
export function answerStandardRequest(setup: SetupPacket, device: StandardRequestTarget): ControlReply {
  const recipient = setup.bmRequestType & RECIPIENT_MASK;
  const directionIn = (setup.bmRequestType & REQUEST_DIR_IN) !== 0;
  const state = device.state;
  switch (setup.bRequest) {
    case StandardRequest.GET_DESCRIPTOR:
      if (!directionIn) return EPIPE;
      if (recipient === RECIPIENT_INTERFACE)
        return device.interfaceDescriptor(setup.wIndex, setup.wValue >> 8, setup.wValue & 0xff) ?? EPIPE;
      return recipient === RECIPIENT_DEVICE ? deviceDescriptor(setup, device.descriptors) : EPIPE;
    case StandardRequest.GET_STATUS:
      return directionIn ? getStatus(recipient, setup.wIndex, device) : EPIPE;
    case StandardRequest.GET_CONFIGURATION:
      return directionIn ? Uint8Array.of(state.configurationValue) : EPIPE;
    case StandardRequest.GET_INTERFACE:
      if (!directionIn || !state.hasInterface(setup.wIndex)) return EPIPE;
      return Uint8Array.of(state.alternateOf(setup.wIndex));
    case StandardRequest.CLEAR_FEATURE:
    case StandardRequest.SET_FEATURE:
      return feature(setup, setup.bRequest === StandardRequest.SET_FEATURE, device);
    default:
      // SET_ADDRESS is virtualised by the backend and never reaches a device; SET_DESCRIPTOR and
      // SYNCH_FRAME are optional and not supported: request error.
      return EPIPE;
  }
}

function deviceDescriptor(setup: SetupPacket, d: DeviceDescriptors): ControlReply {
  const index = setup.wValue & 0xff;
  switch (setup.wValue >> 8) {
    case DescriptorType.DEVICE:
      return d.device;
    case DescriptorType.CONFIGURATION:
      return d.configurations[index] ?? EPIPE;
    case DescriptorType.STRING:
      // Only one language is offered; hosts asking with another LANGID get English, as most devices do.
      return d.strings.get(index) ?? EPIPE;
    case DescriptorType.DEVICE_QUALIFIER:
      return d.deviceQualifier ?? EPIPE;
    case DescriptorType.OTHER_SPEED_CONFIGURATION:
      return d.otherSpeedConfigurations?.[index] ?? EPIPE;
    case DescriptorType.BOS:
      return d.bos ?? EPIPE;
    default:
      return EPIPE;
  }
}

function getStatus(recipient: number, wIndex: number, device: StandardRequestTarget): ControlReply {
  const state = device.state;
  const status = new Uint8Array(STATUS_LENGTH);
  if (recipient === RECIPIENT_DEVICE) {
    const layout = state.configuration ?? device.descriptors.layout[0];
    // Remote wakeup (bit 1) is never armed: SET_FEATURE(DEVICE_REMOTE_WAKEUP) is a no-op.
    status[0] = layout?.selfPowered ? STATUS_SELF_POWERED : 0;
    return status;
  }
  if (recipient === RECIPIENT_INTERFACE) return state.hasInterface(wIndex) ? status : EPIPE;
  if (recipient === RECIPIENT_ENDPOINT) {
    const address = wIndex & (ENDPOINT_DIR_IN | ENDPOINT_NUMBER_MASK);
    if ((address & ENDPOINT_NUMBER_MASK) === 0) return status;
    if (!state.isActive(address)) return EPIPE;
    status[0] = state.isHalted(address) ? STATUS_HALTED : 0;
    return status;
  }
  return EPIPE;
}

function feature(setup: SetupPacket, set: boolean, device: StandardRequestTarget): ControlReply {
  const recipient = setup.bmRequestType & RECIPIENT_MASK;
  if (recipient === RECIPIENT_DEVICE && setup.wValue === Feature.DEVICE_REMOTE_WAKEUP) return OK;
  if (recipient !== RECIPIENT_ENDPOINT || setup.wValue !== Feature.ENDPOINT_HALT) return EPIPE;
  const address = setup.wIndex & (ENDPOINT_DIR_IN | ENDPOINT_NUMBER_MASK);
  if (!set) return device.clearHalt(address);
  if ((address & ENDPOINT_NUMBER_MASK) === 0) return OK;
  if (!device.state.isActive(address)) return EPIPE;
  device.halt(address);
  return OK;
}
