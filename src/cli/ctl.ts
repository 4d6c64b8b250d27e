/**
 * `usbvirt ctl [--control PATH] [--json] VERB …`: steer a running `serve` (or `redirect`) through its
 * control socket (src/toolstack): list, bind SEL, unbind SEL|BUSID, detach BUSID, assign SEL --to
 * qemu:HOST:PORT|unix:PATH, release SEL. Prints a table (list) or one line; --json prints the reply's
 * result as the daemon sent it. Exit 0 on success, 1 when the daemon refused (its error code and
 * message on stderr), 2 on a usage error.
 */
import { connect } from "node:net";
import { escapeControls, escapeForTerminal } from "../network-face/log.js";
import { defaultControlPath } from "../toolstack/control-server.js";
import {
  CONTROL_VERSION,
  type ControlReply,
  type DeviceRow,
  type ListResult,
} from "../toolstack/protocol.js";
import type { CommandSpec } from "./args.js";
import { UsageError } from "./errors.js";

const REPLY_TIMEOUT_MS = 60_000;
/** A list of every device is a few KiB; anything past this is not ours. */
const MAX_REPLY_BYTES = 4 * 1024 * 1024;

export const CTL: CommandSpec = {
  name: "ctl",
  summary:
    "Steer a running 'usbvirt serve --control' (or redirect): list, bind, unbind, detach, assign, release.",
  positionals: ["VERB", "ARG?"],
  options: [
    {
      name: "control",
      kind: "string",
      value: "PATH",
      help: "the daemon's control socket (default $RUNTIME_DIRECTORY/control.sock or $XDG_RUNTIME_DIR/usbvirt/control.sock)",
    },
    {
      name: "to",
      kind: "string",
      value: "qemu:HOST:PORT|unix:PATH",
      help: "assign: the VM's usb-redir chardev (listening)",
    },
    { name: "json", kind: "boolean", help: "print the daemon's reply as JSON" },
  ],
  details: `Verbs:
  list                   every host device (libusb) and emulated device with its state
  bind SEL               export SEL over USB/IP now (SEL: loopback | keyboard | storage | VID:PID | BUS-PORT | serial=S)
  unbind SEL|BUSID       withdraw it (its importer sees it go, as on unplug)
  detach BUSID           cut the importer off; the device stays bound
  assign SEL --to T      give SEL to a VM whose usb-redir chardev listens at T (qemu:HOST:PORT or unix:PATH)
  release SEL            take it back from the VM
Bindings and assignments made here are kept in the daemon's --state-dir and restored when it restarts.`,
};

export interface CtlIo {
  out(text: string): void;
  err(text: string): void;
}

/** One request, one reply, over the socket at `path`. */
export function controlRequest(path: string, request: Record<string, unknown>): Promise<ControlReply> {
  return new Promise((resolve, reject) => {
    const socket = connect({ path });
    const chunks: Buffer[] = [];
    let size = 0;
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error(`no answer on ${path} within ${REPLY_TIMEOUT_MS / 1000} s`));
    }, REPLY_TIMEOUT_MS);
    const done = (err: Error | null, reply?: ControlReply) => {
      clearTimeout(timer);
      socket.destroy();
      if (err !== null) reject(err);
      else resolve(reply!);
    };
    socket.once("connect", () =>
      socket.write(`${JSON.stringify({ v: CONTROL_VERSION, id: 1, ...request })}\n`),
    );
    socket.on("data", (c: Buffer) => {
      size += c.length;
      if (size > MAX_REPLY_BYTES) return done(new Error(`the reply is larger than ${MAX_REPLY_BYTES} bytes`));
      chunks.push(c);
      const text = Buffer.concat(chunks).toString("utf8");
      const nl = text.indexOf("\n");
      if (nl < 0) return;
      try {
        done(null, JSON.parse(text.slice(0, nl)) as ControlReply);
      } catch (err) {
        done(new Error(`the daemon's reply is not JSON: ${(err as Error).message}`));
      }
    });
    socket.once("error", (err: NodeJS.ErrnoException) => {
      const why =
        err.code === "ENOENT"
          ? "no such socket (is usbvirt serve running with --control?)"
          : err.code === "EACCES"
            ? "permission denied (the socket is for its owner and group)"
            : err.code === "ECONNREFUSED"
              ? "nothing listens there"
              : err.message;
      done(new Error(`cannot connect to ${path}: ${why}`));
    });
    socket.once("end", () => {
      if (chunks.length === 0 || !Buffer.concat(chunks).includes(0x0a))
        done(new Error(`${path} closed without a reply`));
    });
  });
}

/** The request a command line asks for (throws UsageError). */
export function ctlRequest(
  positionals: readonly string[],
  options: Readonly<Record<string, unknown>>,
): Record<string, unknown> {
  const [verb, arg] = positionals;
  const to = options.to;
  const need = (what: string): string => {
    if (arg === undefined) throw new UsageError("ctl", `${verb} needs ${what}`);
    return arg;
  };
  if (to !== undefined && verb !== "assign") throw new UsageError("ctl", "--to is for assign only");
  switch (verb) {
    case "list":
      if (arg !== undefined) throw new UsageError("ctl", `list takes no argument, got '${arg}'`);
      return { verb };
    case "bind":
    case "release":
      return { verb, device: need("a device (SEL)") };
    case "unbind":
      return { verb, device: need("a device or a bus id") };
    case "detach":
      return { verb, busid: need("a bus id") };
    case "assign":
      if (typeof to !== "string")
        throw new UsageError("ctl", "assign needs --to qemu:HOST:PORT or unix:PATH");
      return { verb, device: need("a device (SEL)"), to };
    default:
      throw new UsageError("ctl", `unknown verb '${verb}' (list, bind, unbind, detach, assign, release)`);
  }
}

export async function ctlCommand(
  positionals: readonly string[],
  options: Readonly<Record<string, unknown>>,
  io: CtlIo,
): Promise<number> {
  const request = ctlRequest(positionals, options);
  const path = typeof options.control === "string" ? options.control : defaultControlPath();
  const reply = await controlRequest(path, request);
  // What the daemon says may quote a device's strings or another client's request: escaped for the terminal.
  if (options.json === true) {
    io.out(
      escapeForTerminal(`${JSON.stringify(reply.ok ? reply.result : { error: reply.error }, null, 2)}\n`),
    );
    return reply.ok ? 0 : 1;
  }
  if (!reply.ok) {
    io.err(
      escapeForTerminal(
        `usbvirt ctl: ${request.verb} refused (${reply.error.code}): ${reply.error.message}\n`,
      ),
    );
    return 1;
  }
  if (request.verb === "list") io.out(listTable(reply.result as ListResult));
  else
    io.out(`${escapeControls(oneLine(request.verb as string, reply.result as Record<string, unknown>))}\n`);
  return 0;
}

function oneLine(verb: string, r: Record<string, unknown>): string {
  switch (verb) {
    case "bind":
      return r.state === "waiting"
        ? `${r.device}: bound as ${r.busid}, waiting for it to be plugged in`
        : `${r.device}: bound as ${r.busid}`;
    case "unbind":
      return `${r.busid}: unbound`;
    case "detach":
      return `${r.busid}: ${r.detached} detached`;
    case "assign":
      return `${r.device}: assigned to ${r.vm}`;
    default:
      return `${r.device}: released`;
  }
}

function stateText(d: DeviceRow): string {
  switch (d.state) {
    case "bound":
      return `bound as ${d.busid}`;
    case "imported":
      return `imported as ${d.busid} by ${d.client} since ${d.since}`;
    case "waiting":
      return `bound as ${d.busid}, not plugged in`;
    case "assigned":
      return `assigned to ${d.vm}${d.since !== undefined ? ` since ${d.since}` : ""}`;
    case "failed":
      return `failed${d.busid !== undefined ? ` (${d.busid})` : ""}: ${d.why}`;
    case "denied":
      return `denied by the filter: ${d.why}`;
    case "in-use":
      return `in use: ${d.why}`;
    default:
      return "available";
  }
}

/** The list as a table; every cell escaped whole (a line break in a device's product string would forge a row). */
export function listTable(result: ListResult): string {
  const rows = result.devices.map((d) =>
    [d.kind, d.device, d.description, stateText(d)].map((cell) => escapeControls(cell)),
  );
  const head = ["KIND", "DEVICE", "DESCRIPTION", "STATE"];
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const line = (r: readonly string[]) =>
    r
      .map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]!)))
      .join("  ")
      .trimEnd();
  const out = [line(head), ...rows.map(line)];
  if (result.hostListError !== undefined)
    out.push(`(host devices not listed: ${escapeControls(result.hostListError)})`);
  return `${out.join("\n")}\n`;
}
