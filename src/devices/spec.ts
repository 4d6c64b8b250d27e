/**
 * What to put on a port, as plain data (it crosses threads by structured
 * clone): a built-in emulated device by name, or a host device (libusb).
 */
export type EmulatedDeviceName = "loopback" | "keyboard" | "storage";

export interface EmulatedDeviceSpec {
  readonly kind: "emulated";
  readonly name: EmulatedDeviceName;
  /** Device-specific options (speed, storage size or backing file, …). */
  readonly options?: Readonly<Record<string, unknown>>;
}

export interface HostDeviceSpec {
  readonly kind: "host";
  /** Select by vid:pid, bus-port path or serial. */
  readonly vendorId?: number;
  readonly productId?: number;
  readonly busPort?: string;
  readonly serial?: string;
}

export type DeviceSpec = EmulatedDeviceSpec | HostDeviceSpec;

export function describeSpec(spec: DeviceSpec): string {
  if (spec.kind === "emulated") return `emulated ${spec.name}`;
  const parts = [
    spec.vendorId !== undefined ? `vid 0x${spec.vendorId.toString(16).padStart(4, "0")}` : "",
    spec.productId !== undefined ? `pid 0x${spec.productId.toString(16).padStart(4, "0")}` : "",
    spec.busPort ?? "",
    spec.serial !== undefined ? `serial ${spec.serial}` : "",
  ].filter((p) => p !== "");
  return `host device ${parts.join(" ")}`;
}
