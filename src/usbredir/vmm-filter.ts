/**
 * The VMM's device filter (a filter_filter packet: usbredirfilter's rule string), judged against the
 * redirected device as QEMU judges it: usbredirfilter_check without DEFAULT_ALLOW, so a device no rule
 * allows is refused. A pure function of the packet and the device model; the server logs and acts on it.
 */
import { type FilterRule, judge, parseRules } from "../devices/host/filter.js";
import type { RedirDeviceModel } from "./device-model.js";

export type VmmFilterVerdict =
  /** The packet is not a NUL-terminated string: a protocol error. */
  | { readonly kind: "malformed"; readonly reason: string }
  /** The rules cannot be read: ignored. */
  | { readonly kind: "unreadable"; readonly text: string; readonly error: string }
  | { readonly kind: "allowed" | "refused"; readonly text: string; readonly why: string };

export function judgeVmmFilter(data: Uint8Array, model: RedirDeviceModel): VmmFilterVerdict {
  const nul = data.indexOf(0);
  if (nul !== data.length - 1) {
    return { kind: "malformed", reason: "filter_filter string is not NUL-terminated where its length says" };
  }
  const text = Buffer.from(data.subarray(0, nul)).toString("latin1");
  let rules: FilterRule[];
  try {
    rules = parseRules(text);
  } catch (err) {
    return { kind: "unreadable", text, error: (err as Error).message };
  }
  const d = model.description;
  const verdict = judge(
    { rules: [...rules, { action: "deny" }] },
    {
      vendorId: d.vendorId,
      productId: d.productId,
      deviceClass: d.deviceClass,
      bcdDevice: d.bcdDevice,
      portPath: "",
      // The interfaces QEMU is (or will be) told of: the active configuration's, else the first's.
      interfaceClasses: (
        d.configurations.find((c) => c.value === model.configuration) ?? d.configurations[0]
      )?.interfaces
        .filter((i) => i.alternate === 0)
        .map((i) => i.cls),
    },
  );
  return { kind: verdict.allowed ? "allowed" : "refused", text, why: verdict.why };
}
