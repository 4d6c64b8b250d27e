/**
 * A small command-line parser (no dependency): `--name value`, `--name=value`,
 * boolean flags, repeatable options, positionals, `--` to end options, and
 * `-h`/`--help`. Usage mistakes throw UsageError, which the CLI turns into a
 * message and exit status 2.
 */
import { UsageError } from "./errors.js";

export interface OptionSpec {
  readonly name: string;
  readonly kind: "string" | "boolean";
  readonly multiple?: boolean;
  /** Placeholder in help, e.g. "ADDR". */
  readonly value?: string;
  readonly help: string;
}

export interface CommandSpec {
  readonly name: string;
  readonly summary: string;
  /** Positional arguments in order; a trailing "?" marks one optional. */
  readonly positionals: readonly string[];
  readonly options: readonly OptionSpec[];
  /** Extra help text after the option list. */
  readonly details?: string;
  /** Flags that were renamed (old name → new name, without "--"): refused with a message naming the new one. */
  readonly renamed?: Readonly<Record<string, string>>;
}

export interface Parsed {
  readonly options: Readonly<Record<string, string | boolean | string[] | undefined>>;
  readonly positionals: readonly string[];
  readonly help: boolean;
}

export function parseArgs(spec: CommandSpec, argv: readonly string[]): Parsed {
  const options: Record<string, string | boolean | string[] | undefined> = {};
  const positionals: string[] = [];
  let help = false;
  let onlyPositionals = false;
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (onlyPositionals || !arg.startsWith("-") || arg === "-") {
      positionals.push(arg);
      continue;
    }
    if (arg === "--") {
      onlyPositionals = true;
      continue;
    }
    if (arg === "-h" || arg === "--help") {
      help = true;
      continue;
    }
    if (!arg.startsWith("--")) throw new UsageError(spec.name, `unknown option '${arg}'`);
    const eq = arg.indexOf("=");
    const name = arg.slice(2, eq < 0 ? undefined : eq);
    const option = spec.options.find((o) => o.name === name);
    if (option === undefined) {
      const now = spec.renamed?.[name];
      throw new UsageError(
        spec.name,
        now !== undefined ? `--${name} was renamed --${now}` : `unknown option '--${name}'`,
      );
    }
    if (option.kind === "boolean") {
      if (eq >= 0) throw new UsageError(spec.name, `--${name} takes no value`);
      options[name] = true;
      continue;
    }
    let value: string;
    if (eq >= 0) value = arg.slice(eq + 1);
    else {
      const next = argv[i + 1];
      if (next === undefined || (next.startsWith("--") && next.length > 2)) {
        throw new UsageError(spec.name, `--${name} needs a value (${option.value ?? "VALUE"})`);
      }
      value = next;
      i++;
    }
    if (option.multiple) {
      const list = (options[name] as string[] | undefined) ?? [];
      list.push(value);
      options[name] = list;
    } else {
      if (options[name] !== undefined) throw new UsageError(spec.name, `--${name} given twice`);
      options[name] = value;
    }
  }
  if (!help) {
    const required = spec.positionals.filter((p) => !p.endsWith("?")).length;
    if (positionals.length < required) {
      throw new UsageError(
        spec.name,
        `missing ${spec.positionals
          .slice(positionals.length)
          .filter((p) => !p.endsWith("?"))
          .join(" ")}`,
      );
    }
    if (positionals.length > spec.positionals.length) {
      throw new UsageError(spec.name, `unexpected argument '${positionals[spec.positionals.length]}'`);
    }
  }
  return { options, positionals, help };
}

export function commandHelp(spec: CommandSpec): string {
  const pos = spec.positionals.map((p) => (p.endsWith("?") ? `[${p.slice(0, -1)}]` : p)).join(" ");
  const lines = [
    `usage: usbvirt ${spec.name}${spec.options.length > 0 ? " [options]" : ""}${pos ? ` ${pos}` : ""}`,
    "",
    spec.summary,
  ];
  if (spec.options.length > 0) {
    lines.push("", "options:");
    const rows = spec.options.map((o) => [
      `--${o.name}${o.kind === "string" ? ` ${o.value ?? "VALUE"}` : ""}`,
      o.help + (o.multiple ? " (repeatable)" : ""),
    ]);
    rows.push(["-h, --help", "show this help"]);
    const width = Math.max(...rows.map((r) => r[0]!.length));
    for (const [left, right] of rows) lines.push(`  ${left!.padEnd(width)}  ${right}`);
  }
  if (spec.details !== undefined) lines.push("", spec.details.trimEnd());
  return `${lines.join("\n")}\n`;
}

/** "64M", "1G", "512K", "4096", "64MiB" → bytes. */
export function parseSize(text: string): number | null {
  const m = /^(\d+)\s*([kmgt]?)(i?b)?$/i.exec(text.trim());
  if (m === null) return null;
  const unit = { "": 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3, t: 1024 ** 4 }[m[2]!.toLowerCase()] ?? 1;
  const n = Number(m[1]) * unit;
  return Number.isSafeInteger(n) ? n : null;
}

/** Options `serve` and `redirect` share, spelled once. */
export const STORAGE_SIZE_OPTION: OptionSpec = {
  name: "storage-size",
  kind: "string",
  value: "SIZE",
  help: "size of the emulated storage device (default 64M)",
};
export const STORAGE_SPEED_OPTION: OptionSpec = {
  name: "storage-speed",
  kind: "string",
  value: "full|high|super",
  help: "the emulated storage device's USB speed (default high; super: SuperSpeed, 5 Gb/s)",
};
export const STORAGE_FILE_OPTION: OptionSpec = {
  name: "storage-file",
  kind: "string",
  value: "PATH",
  help: "back the emulated storage device by this file",
};
export const QUIET_OPTION: OptionSpec = {
  name: "quiet",
  kind: "boolean",
  help: "log only warnings and errors",
};
export const METRICS_OPTION: OptionSpec = {
  name: "metrics",
  kind: "string",
  value: "[HOST:]PORT|unix:PATH",
  help: "serve Prometheus metrics at http://HOST:PORT/metrics and a status page at / (host 127.0.0.1 unless given; unix:PATH: a socket file, mode 0660)",
};
export const LOG_FORMAT_OPTION: OptionSpec = {
  name: "log-format",
  kind: "string",
  value: "text|json",
  help: "log lines as text (default) or one JSON object per line (time, level, message, client, busid)",
};
export const CONTROL_OPTION: OptionSpec = {
  name: "control",
  kind: "string",
  value: "PATH",
  help: 'open a control socket for usbvirt ctl (mode 0660; "default": $RUNTIME_DIRECTORY/control.sock or $XDG_RUNTIME_DIR/usbvirt/control.sock)',
};
export const STATE_DIR_OPTION: OptionSpec = {
  name: "state-dir",
  kind: "string",
  value: "DIR",
  help: "with --control: keep runtime bindings and assignments here (default $STATE_DIRECTORY or $XDG_STATE_HOME/usbvirt)",
};
export const CONFIG_OPTION: OptionSpec = {
  name: "config",
  kind: "string",
  value: "FILE",
  help: "read these settings from a JSON file (flags win)",
};
export const ANNOUNCE_OPTION: OptionSpec = {
  name: "announce",
  kind: "boolean",
  help: "announce this server and its devices on the local network (multicast DNS, DNS-SD); off by default",
};
export const NAME_OPTION: OptionSpec = {
  name: "name",
  kind: "string",
  value: "NAME",
  help: "with --announce: added to the host's name in the announcement",
};

/** A `--NAME SECONDS` option (decimals allowed, e.g. 0.5) → milliseconds. */
export function secondsOption(
  options: Parsed["options"],
  name: string,
  fallback: number,
  command: string,
): number {
  const text = options[name];
  if (text === undefined) return fallback * 1000;
  const s = typeof text === "string" && /^\d+(\.\d+)?$/.test(text) ? Number(text) : Number.NaN;
  if (!(s > 0 && s <= 86_400)) {
    throw new UsageError(
      command,
      `--${name} must be a number of seconds above 0 (e.g. 5 or 0.5), not "${String(text)}"`,
    );
  }
  return Math.max(1, Math.round(s * 1000));
}
