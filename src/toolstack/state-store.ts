/**
 * What the toolstack changed at run time, kept across restarts (as usbipd-win keeps its bindings): the
 * devices bound beyond the config, the config's devices unbound, and the devices assigned to VMs. The
 * config stays the starting point; this file says what changed since.
 *
 * The file (DIR/state.json) is written atomically: a temporary file in the same folder, fsync'd, renamed
 * over the old one, and the folder fsync'd, so a crash leaves either the old state or the new one. It is
 * read through a valibot schema: a file that does not check is reported and ignored (never half-applied).
 */
import { closeSync, fsyncSync, mkdirSync, openSync, readSync, renameSync, writeSync } from "node:fs";
import { join } from "node:path";
import * as v from "valibot";
import { describeIssues } from "../devices/spec-schema.js";

export const STATE_VERSION = 1;
/** A state file is a few KiB; anything larger is not ours. */
const MAX_STATE_BYTES = 1024 * 1024;

const Sel = v.pipe(v.string(), v.minLength(1), v.maxLength(256));
export const StateSchema = v.strictObject({
  version: v.literal(STATE_VERSION),
  /** Runtime binds, with the bus id each had (restored on the same port when it is free). */
  bound: v.pipe(
    v.array(v.strictObject({ device: Sel, busid: v.pipe(v.string(), v.regex(/^1-\d{1,2}$/)) })),
    v.maxLength(64),
  ),
  /** The config's devices unbound, by bus id (the same at every start). */
  unbound: v.pipe(v.array(Sel), v.maxLength(64)),
  assigned: v.pipe(
    v.array(v.strictObject({ device: Sel, to: v.pipe(v.string(), v.maxLength(1024)) })),
    v.maxLength(64),
  ),
});
export type ToolstackState = v.InferOutput<typeof StateSchema>;

export function emptyState(): ToolstackState {
  return { version: STATE_VERSION, bound: [], unbound: [], assigned: [] };
}

/** The state folder's default: systemd's StateDirectory, else $XDG_STATE_HOME/usbvirt, else ~/.local/state/usbvirt. */
export function defaultStateDir(env: NodeJS.ProcessEnv = process.env): string {
  const systemd = env.STATE_DIRECTORY?.split(":")[0];
  if (systemd !== undefined && systemd !== "") return systemd;
  const xdg = env.XDG_STATE_HOME;
  if (xdg?.startsWith("/")) return join(xdg, "usbvirt");
  return join(env.HOME ?? "/var/lib", ".local", "state", "usbvirt");
}

export class StateStore {
  readonly file: string;

  constructor(readonly dir: string) {
    this.file = join(dir, "state.json");
  }

  /** The saved state (empty when there is none); a file that does not check throws, naming why. */
  load(): ToolstackState {
    let text: string;
    try {
      const fd = openSync(this.file, "r");
      try {
        const buf = Buffer.alloc(MAX_STATE_BYTES + 1);
        const n = readFileSyncBounded(fd, buf);
        if (n > MAX_STATE_BYTES) throw new Error(`${this.file} is larger than ${MAX_STATE_BYTES} bytes`);
        text = buf.subarray(0, n).toString("utf8");
      } finally {
        closeSync(fd);
      }
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "ENOENT") return emptyState();
      throw err;
    }
    let value: unknown;
    try {
      value = JSON.parse(text);
    } catch (err) {
      throw new Error(`${this.file} is not JSON: ${(err as Error).message}`);
    }
    const result = v.safeParse(StateSchema, value);
    if (!result.success) throw new Error(`${this.file}: ${describeIssues(result.issues, "state")}`);
    return result.output;
  }

  /** Write `state` atomically (temp + fsync + rename + fsync of the folder). */
  save(state: ToolstackState): void {
    mkdirSync(this.dir, { recursive: true, mode: 0o750 });
    const tmp = `${this.file}.${process.pid}.tmp`;
    const fd = openSync(tmp, "w", 0o640);
    try {
      writeSync(fd, `${JSON.stringify(state, null, 2)}\n`);
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    renameSync(tmp, this.file);
    const dirFd = openSync(this.dir, "r");
    try {
      fsyncSync(dirFd);
    } finally {
      closeSync(dirFd);
    }
  }
}

function readFileSyncBounded(fd: number, buf: Buffer): number {
  let n = 0;
  // Bounded: the buffer is MAX_STATE_BYTES + 1 long and every read adds at least a byte.
  while (n < buf.length) {
    const got = readSync(fd, buf, n, buf.length - n, null);
    if (got === 0) break;
    n += got;
  }
  return n;
}
