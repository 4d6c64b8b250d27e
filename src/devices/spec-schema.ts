/**
 * The schema of a DeviceSpec (src/devices/spec.ts), one gate for every way a spec comes in: a `usbvirt
 * serve` config file's `devices` entries and `Connection.attach` from a VMM. A spec crosses to the backend
 * worker by structured clone and is only read there, so it is checked here, before it leaves the caller's
 * thread: each kind and each emulated device's options are strict objects (an unknown or misspelled key is
 * an error), numbers are range-checked, and the error names the field ("spec.options.file: …").
 *
 * valibot: see src/cli/config.ts for why. The same schema is exported as JSON Schema
 * (schema/usbvirt.schema.json) by scripts/gen-config-schema.ts.
 */
import * as v from "valibot";
import { InvalidOptionError } from "../util/errors.js";
import type { DeviceSpec, UsbipDeviceSpec, UsbipSelectorSpec } from "./spec.js";

/** UsbSpeed.FULL / UsbSpeed.HIGH: the speeds the emulated devices implement (descriptors.ts). */
const Speed = v.pipe(
  v.picklist([2, 3], (i) => `must be 2 (full speed) or 3 (high speed), not ${i.received}`),
  v.description("USB speed: 2 = full, 3 = high"),
);
/** The storage is SuperSpeed-capable too (its descriptors have a BOS and endpoint companions). */
const StorageSpeed = v.pipe(
  v.picklist([2, 3, 4], (i) => `must be 2 (full), 3 (high) or 4 (super speed), not ${i.received}`),
  v.description("USB speed: 2 = full, 3 = high, 4 = super"),
);
const SerialText = v.pipe(
  v.string(),
  v.minLength(1, "must not be empty"),
  v.maxLength(126, "is longer than 126"),
);
const Placement = v.pipe(
  v.picklist(["backend", "worker"], (i) => `placement must be 'backend' or 'worker', got ${i.received}`),
  v.description("where the device runs: on the backend's thread (default) or on a port worker of its own"),
);
/** Host and USB/IP devices always get a port worker; saying so is allowed, asking for the backend is not. */
const workerOnly = (kind: string) =>
  v.literal(
    "worker",
    (i) =>
      `${kind} devices always run on a port worker; placement ${JSON.stringify(i.input)} is not possible`,
  );
const u16 = (what: string) =>
  v.pipe(
    v.number(),
    v.integer(`must be an integer 0..0xffff (${what})`),
    v.minValue(0, `must be an integer 0..0xffff (${what})`),
    v.maxValue(0xffff, `must be an integer 0..0xffff (${what})`),
  );

const LoopbackSpec = v.strictObject({
  kind: v.literal("emulated"),
  name: v.literal("loopback"),
  options: v.optional(
    v.strictObject({
      speed: v.optional(Speed),
      fifoCapacity: v.optional(
        v.pipe(
          v.number(),
          v.safeInteger("must be a whole number of bytes"),
          v.minValue(1, "must be at least 1"),
        ),
      ),
      serialNumber: v.optional(SerialText),
    }),
  ),
  placement: v.optional(Placement),
});

const KeyboardSpec = v.strictObject({
  kind: v.literal("emulated"),
  name: v.literal("keyboard"),
  options: v.optional(v.strictObject({ speed: v.optional(Speed), serialNumber: v.optional(SerialText) })),
  placement: v.optional(Placement),
});

/** Mass storage: a block count of 512-byte blocks (store.ts checks the same bounds at open). */
const StorageSpec = v.strictObject({
  kind: v.literal("emulated"),
  name: v.literal("storage"),
  options: v.optional(
    v.strictObject({
      speed: v.optional(StorageSpeed),
      file: v.optional(
        v.pipe(v.string(), v.minLength(1, "must not be empty"), v.description("back the disk by this file")),
      ),
      sizeBytes: v.optional(
        v.pipe(
          v.number(),
          v.safeInteger("must be a whole number of bytes"),
          v.minValue(512, "must be at least 512"),
          v.multipleOf(512, "must be a multiple of 512"),
          v.description("disk size in bytes (a multiple of 512)"),
        ),
      ),
      readOnly: v.optional(v.boolean()),
      removable: v.optional(v.boolean()),
      serialNumber: v.optional(
        v.pipe(v.string(), v.regex(/^[0-9A-F]{12,126}$/, "must be 12+ upper-case hex digits")),
      ),
      vendor: v.optional(v.pipe(v.string(), v.maxLength(8, "is longer than 8 characters"))),
      product: v.optional(v.pipe(v.string(), v.maxLength(16, "is longer than 16 characters"))),
    }),
  ),
  placement: v.optional(Placement),
});

/** A nested variant reports through the outer one's message: say what was expected at the failing key. */
function oneOf(issue: v.BaseIssue<unknown>): string {
  return `must be one of ${issue.expected?.replace(/^\((.*)\)$/, "$1")}, not ${issue.received}`;
}

const EmulatedSpec = v.variant("name", [LoopbackSpec, KeyboardSpec, StorageSpec], oneOf);

const HostSpec = v.pipe(
  v.strictObject({
    kind: v.literal("host"),
    vendorId: v.optional(u16("vendor id")),
    productId: v.optional(u16("product id")),
    busPort: v.optional(v.pipe(v.string(), v.regex(/^\d+-\d+(\.\d+)*$/, 'must look like "1-1.2"'))),
    serial: v.optional(SerialText),
    placement: v.optional(workerOnly("host")),
  }),
  v.check(
    (s) =>
      s.vendorId !== undefined ||
      s.productId !== undefined ||
      s.busPort !== undefined ||
      s.serial !== undefined,
    "a host device spec needs vendorId, productId, busPort or serial",
  ),
);

/** A timer's length: a positive integer of milliseconds that setTimeout can hold. */
const milliseconds = v.pipe(
  v.number(),
  v.integer("must be a whole number of milliseconds"),
  v.minValue(1, "must be at least 1 ms"),
  v.maxValue(2 ** 31 - 1, "must be at most 2147483647 ms"),
);

/** A PEM file (a certificate, a key, CA certificates). */
const PemFile = v.strictObject({ file: v.pipe(v.string(), v.minLength(1, "must not be empty")) });
/** A certificate's SHA-256 fingerprint: "SHA256:" and 32 bytes in hex (colons optional). */
const FingerprintText = v.pipe(
  v.string(),
  v.regex(/^[Ss][Hh][Aa]256:([0-9A-Fa-f]{2}:?){31}[0-9A-Fa-f]{2}$/, 'must be "SHA256:" and 32 bytes in hex'),
);

const UsbipSpec = v.pipe(
  v.strictObject({
    kind: v.literal("usbip"),
    host: v.optional(
      v.pipe(v.string(), v.minLength(1, "must not be empty"), v.maxLength(253, "is longer than 253")),
    ),
    port: v.optional(
      v.pipe(
        v.number(),
        v.integer("must be an integer 1..65535"),
        v.minValue(1, "must be an integer 1..65535"),
        v.maxValue(65535, "must be an integer 1..65535"),
      ),
    ),
    busid: v.optional(
      v.pipe(v.string(), v.minLength(1, "must not be empty"), v.maxLength(31, "is longer than 31")),
    ),
    select: v.optional(
      v.pipe(
        v.string(),
        v.minLength(1, "must not be empty"),
        v.maxLength(200, "is longer than 200"),
        v.description(
          'instead of host and busid: the device by what it is ("serial=ABC", "VID:PID", "class=C"), wherever a server announces it (serve --announce)',
        ),
      ),
    ),
    discoverMs: v.optional(
      v.pipe(
        milliseconds,
        v.description("with select: how long each look at the network listens (default 2000)"),
      ),
    ),
    timeoutMs: v.optional(milliseconds),
    keepaliveMs: v.optional(milliseconds),
    reconnect: v.optional(v.boolean()),
    retryMinMs: v.optional(milliseconds),
    retryMaxMs: v.optional(milliseconds),
    retryAttempts: v.optional(
      v.pipe(
        v.number(),
        v.integer("must be an integer 1..1000000"),
        v.minValue(1, "must be an integer 1..1000000"),
        v.maxValue(1_000_000, "must be an integer 1..1000000"),
      ),
    ),
    placement: v.optional(workerOnly("usbip")),
    tls: v.optional(
      v.strictObject({
        ca: v.optional(PemFile),
        serverFingerprints: v.optional(v.array(FingerprintText)),
        cert: v.optional(PemFile),
        key: v.optional(PemFile),
        servername: v.optional(v.pipe(v.string(), v.minLength(1, "must not be empty"))),
      }),
    ),
  }),
  v.check(
    (s) =>
      s.select !== undefined
        ? s.host === undefined && s.port === undefined && s.busid === undefined
        : s.host !== undefined && s.busid !== undefined && s.discoverMs === undefined,
    "a usbip spec names its server (host and busid, port optional) or selects its device (select, discoverMs optional), not both",
  ),
  v.check(
    (s) => (s.retryMinMs ?? 500) <= (s.retryMaxMs ?? 30_000),
    "retryMinMs must not be larger than retryMaxMs (defaults 500 and 30000)",
  ),
);

const DeviceSpecVariants = v.variant("kind", [EmulatedSpec, HostSpec, UsbipSpec], oneOf);

/** A checked spec, as its type: a usbip spec's check made sure which of its two forms it has. */
export const DeviceSpecSchema = v.pipe(
  DeviceSpecVariants,
  v.transform((s) => s as DeviceSpec),
);

// The schema and the hand-written DeviceSpec type must agree: a compile error here means one changed alone.
// (A usbip spec's keys are all optional to the schema: which form it has is a check, not a type.)
type LooseUsbipSpec = Omit<UsbipDeviceSpec, "select" | "host" | "busid"> &
  Partial<Pick<UsbipDeviceSpec, "host" | "busid">> &
  Partial<Pick<UsbipSelectorSpec, "select" | "discoverMs">>;
type SchemaSpec = v.InferOutput<typeof DeviceSpecVariants>;
const _specFitsType: (s: SchemaSpec) => Exclude<DeviceSpec, { kind: "usbip" }> | LooseUsbipSpec = (s) => s;
void _specFitsType;

/** "devices[0].options.file" from a valibot issue's path. */
export function pathText(path: readonly { readonly key: unknown }[], root = ""): string {
  let out = root;
  for (const { key } of path) {
    if (typeof key === "number") out += `[${key}]`;
    else out += out === "" ? String(key) : `.${String(key)}`;
  }
  return out;
}

/** "<path>: <message>", an unknown key said as such; `path` defaults to the issue's own. */
export function describeIssue(
  issue: v.BaseIssue<unknown>,
  root: string,
  path: readonly { readonly key: unknown }[] = issue.path ?? [],
): string {
  if (issue.type === "strict_object" && issue.expected === "never") {
    const parent = pathText(path.slice(0, -1), root);
    return `${parent === "" ? "" : `${parent}: `}unknown key ${JSON.stringify(path.at(-1)?.key ?? issue.input)}`;
  }
  const at = pathText(path, root);
  return `${at === "" ? "" : `${at}: `}${issue.message}`;
}

export function describeIssues(issues: readonly v.BaseIssue<unknown>[], root: string): string {
  return issues.map((issue) => describeIssue(issue, root)).join("; ");
}

/** Check a device spec from a caller (a VMM, a config file); throws InvalidOptionError naming the field. */
export function checkDeviceSpec(spec: unknown, what = "spec"): DeviceSpec {
  const result = v.safeParse(DeviceSpecSchema, spec, { abortPipeEarly: true });
  if (!result.success)
    throw new InvalidOptionError(`bad device ${what}: ${describeIssues(result.issues, what)}`);
  return result.output;
}
