/**
 * What an emulated device's host has selected (USB 2.0 §9.1.1.5, §9.4.7, §9.4.10): the configuration,
 * each interface's alternate setting, the endpoints those make active (by address), and which of them are
 * halted (§9.4.5). State only: flushing the transfers a change ends is the device base's.
 */

import type { ConfigurationLayout, EndpointLayout } from "./descriptors.js";

export class EndpointState {
  private config: ConfigurationLayout | null = null;
  private readonly alternates = new Map<number, number>();
  /** Endpoints of the current configuration and alternate settings, by address. */
  private active = new Map<number, EndpointLayout>();
  private readonly halted = new Set<number>();

  /** The current configuration, null while unconfigured (address state). */
  get configuration(): ConfigurationLayout | null {
    return this.config;
  }

  get configurationValue(): number {
    return this.config?.configurationValue ?? 0;
  }

  alternateOf(interfaceNumber: number): number {
    return this.alternates.get(interfaceNumber) ?? 0;
  }

  /** True when the current configuration has interface `interfaceNumber`. */
  hasInterface(interfaceNumber: number): boolean {
    return this.config?.interfaces.some((i) => i.interfaceNumber === interfaceNumber) ?? false;
  }

  /** The active endpoint at `address`, undefined when the configuration and alternates offer none. */
  endpoint(address: number): EndpointLayout | undefined {
    return this.active.get(address);
  }

  isActive(address: number): boolean {
    return this.active.has(address);
  }

  isHalted(address: number): boolean {
    return this.halted.has(address);
  }

  markHalted(address: number): void {
    this.halted.add(address);
  }

  clearHalted(address: number): void {
    this.halted.delete(address);
  }

  /** Select `config` (null: unconfigured): every alternate back to 0, every halt cleared (§9.4.7). */
  configure(config: ConfigurationLayout | null): void {
    this.config = config;
    this.alternates.clear();
    this.halted.clear();
    this.recomputeActive();
  }

  /** Select an alternate setting; the interface's endpoints come back unhalted (§9.4.10). */
  selectAlternate(interfaceNumber: number, alternateSetting: number): void {
    for (const ep of this.active.values())
      if (ep.interfaceNumber === interfaceNumber) this.halted.delete(ep.address);
    this.alternates.set(interfaceNumber, alternateSetting);
    this.recomputeActive();
  }

  private recomputeActive(): void {
    this.active = new Map();
    for (const iface of this.config?.interfaces ?? []) {
      const alt = this.alternateOf(iface.interfaceNumber);
      const setting = iface.alternates.find((a) => a.alternateSetting === alt);
      for (const ep of setting?.endpoints ?? []) this.active.set(ep.address, ep);
    }
  }
}
