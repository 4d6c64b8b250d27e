/**
 * Errors across a thread boundary. Structured clone keeps an Error's message
 * and (in Node) its name, but drops its class, its `code` and everything else
 * a caller switches on; comlink's own "throw" handler keeps only name,
 * message and stack. `serializeError` turns a thrown value into plain data
 * (class name, code, message, stack, primitive own fields, cause chain);
 * `deserializeError` rebuilds an instance of the same registered class
 * (src/util/errors.ts) without calling its constructor, so `instanceof`,
 * `code`, `cause` and the remote stack all hold on the receiving side.
 *
 * The receiving side treats the data as untrusted: every field is checked,
 * the cause chain is cut at MAX_CAUSE_DEPTH (a cycle ends there too), and
 * only primitive own fields up to MAX_FIELDS are copied, none that the
 * rebuilt error already has (a method, an accessor). Names are looked up in
 * Maps only, never on a plain object: a peer's error named "toString" or
 * "__proto__" becomes a plain Error with that name.
 */
import { errorClassNamed, UsbvirtError } from "./errors.js";

/** Causes kept below the top error; deeper ones are replaced by a note. */
export const MAX_CAUSE_DEPTH = 8;
/** Own primitive fields (status, port, fault …) copied per error. */
export const MAX_FIELDS = 16;
/** Longest name / code accepted from the peer. */
const MAX_NAME_LENGTH = 128;

type Primitive = string | number | boolean | null | undefined | bigint;

export interface SerializedErrorData {
  readonly name: string;
  readonly message: string;
  readonly stack?: string;
  readonly code?: string;
  /** A UsbvirtError on the sending side (so a class this side does not know still arrives as one). */
  readonly usbvirt?: boolean;
  /** Own enumerable primitive fields other than name / code / message / stack / cause. */
  readonly fields: Readonly<Record<string, Primitive>>;
  readonly cause?: SerializedValue;
}

/** A thrown (or cause) value on the wire: an error, or any other value made cloneable. */
export type SerializedValue =
  | { readonly kind: "error"; readonly error: SerializedErrorData }
  | { readonly kind: "value"; readonly value: unknown };

const RESERVED = new Set(["name", "message", "stack", "code", "cause"]);

function isPrimitive(v: unknown): v is Primitive {
  return v === null || (typeof v !== "object" && typeof v !== "function" && typeof v !== "symbol");
}

/** A non-error value as it can travel: itself when structured clone accepts it, else its text. */
function cloneable(value: unknown): unknown {
  if (isPrimitive(value)) return value;
  try {
    return structuredClone(value);
  } catch {
    return String(value);
  }
}

/** Turn a thrown value (and its causes, MAX_CAUSE_DEPTH deep) into plain data. */
export function serializeError(value: unknown, depth = 0): SerializedValue {
  if (!(value instanceof Error)) return { kind: "value", value: cloneable(value) };
  const fields: Record<string, Primitive> = {};
  let count = 0;
  for (const key of Object.keys(value)) {
    if (RESERVED.has(key) || count >= MAX_FIELDS) continue;
    const v = (value as unknown as Record<string, unknown>)[key];
    if (isPrimitive(v)) {
      fields[key] = v;
      count++;
    }
  }
  const code = (value as { code?: unknown }).code;
  const hasCause = "cause" in value && value.cause !== undefined;
  let cause: SerializedValue | undefined;
  if (hasCause) {
    cause =
      depth < MAX_CAUSE_DEPTH
        ? serializeError(value.cause, depth + 1)
        : { kind: "value", value: `(cause chain cut after ${MAX_CAUSE_DEPTH} levels)` };
  }
  return {
    kind: "error",
    error: {
      name: String(value.name),
      message: String(value.message),
      ...(typeof value.stack === "string" ? { stack: value.stack } : {}),
      ...(typeof code === "string" ? { code } : {}),
      ...(value instanceof UsbvirtError ? { usbvirt: true } : {}),
      fields,
      ...(cause === undefined ? {} : { cause }),
    },
  };
}

/** The builtin error classes by name (a Map: a peer's name such as "toString" finds nothing). */
const BUILTIN: ReadonlyMap<string, abstract new (...args: never[]) => Error> = new Map(
  [Error, TypeError, RangeError, SyntaxError, ReferenceError, EvalError, URIError].map((c) => [c.name, c]),
);

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null;
}

function define(target: object, key: string, value: unknown): void {
  Object.defineProperty(target, key, { value, writable: true, configurable: true, enumerable: false });
}

/**
 * Rebuild what `serializeError` produced. An error becomes an instance of the
 * class registered under its name (else UsbvirtError when it was one on the
 * sending side, else the builtin of that name, else Error; a code is kept either way). Malformed input never throws here:
 * it becomes an Error that says so.
 */
export function deserializeError(wire: unknown, depth = 0): unknown {
  if (!isRecord(wire)) return new Error("malformed error from another thread");
  if (wire.kind === "value") return wire.value;
  const e = wire.error;
  if (wire.kind !== "error" || !isRecord(e) || typeof e.message !== "string" || typeof e.name !== "string") {
    return new Error("malformed error from another thread");
  }
  const name = e.name.slice(0, MAX_NAME_LENGTH);
  const code = typeof e.code === "string" ? e.code.slice(0, MAX_NAME_LENGTH) : undefined;
  // A Node system error (code ENOENT, …) stays an Error with its code; only usbvirt's become UsbvirtError.
  const cls = errorClassNamed(name) ?? (e.usbvirt === true ? UsbvirtError : (BUILTIN.get(name) ?? Error));
  const error = Object.create(cls.prototype) as Error;
  define(error, "message", e.message);
  if (typeof e.stack === "string") define(error, "stack", e.stack);
  // UsbvirtError sets name and code as own enumerable fields; keep that shape.
  (error as { name: string }).name = name;
  if (code !== undefined) (error as { code?: string }).code = code;
  if (isRecord(e.fields)) {
    let count = 0;
    for (const [key, v] of Object.entries(e.fields)) {
      if (count >= MAX_FIELDS) break;
      // A name the rebuilt error already answers (toString, constructor, a class's accessor, __proto__)
      // is left out: a field must not shadow a method or run a setter.
      if (RESERVED.has(key) || key in error || !isPrimitive(v)) continue;
      (error as unknown as Record<string, unknown>)[key] = v;
      count++;
    }
  }
  if (e.cause !== undefined) {
    define(
      error,
      "cause",
      depth < MAX_CAUSE_DEPTH
        ? deserializeError(e.cause, depth + 1)
        : `(cause chain cut after ${MAX_CAUSE_DEPTH} levels)`,
    );
  }
  return error;
}
