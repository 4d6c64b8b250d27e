/**
 * The folders of src/ are the layers of usbvirt, and imports run down only. LAYERS below is the one table
 * of folder -> rank (bottom first); a file belongs to the longest folder of the table that holds it. A
 * file may import files of its own rank and of lower ranks, never of a higher one, and no files may import
 * each other (directly or round a longer cycle). Every import counts: static `import` and `export … from`,
 * type-only ones, and `import("…")` with a literal. The README's Layout table describes the same order.
 */
import { readFileSync, statSync } from "node:fs";
import { join, posix, relative, sep } from "node:path";
import ts from "typescript";
import { describe, expect, it } from "vitest";
import { SRC, tsFiles } from "./support/source-files.js";

/** Folder (relative to src/, "" is src/ itself) -> rank, bottom first. */
const LAYERS: Readonly<Record<string, number>> = {
  util: 0, // errors, error wire format, comlink, byte queue, starting workers
  tls: 1, // TLS settings, fingerprints, the client connect (the server side is network-face's)
  usb: 1, // USB's own vocabulary (a leaf; test/usb/vocabulary.test.ts)
  "dma-map": 2, // guest memory, grant table, grant mapper
  rings: 3, // SPSC rings, doorbells, spin, conn ring
  urb: 4, // URB wire format and parse gate
  connection: 5, // what one frontend <-> backend connection shares (handles)
  devices: 6, // the device contract (UsbDevice) and device specs
  usbip: 7, // the USB/IP wire format and its client
  "devices/emulated": 8,
  "devices/host": 8,
  "devices/remote": 8,
  port: 9, // port ring wire format, port service, device factory
  discovery: 9, // DNS-SD over multicast DNS: announcing a server, discovering servers, finding a device
  backend: 10,
  frontend: 11,
  workers: 12, // thin worker entry files
  guest: 12,
  engine: 13, // the control plane
  "network-face": 13, // what both network servers share: gate, per-peer share, listener, logger, bounds
  "usbip-server": 14,
  "usbip-attach": 14,
  usbredir: 14,
  soak: 14,
  toolstack: 15, // the control socket, its protocol, runtime bind/assign and the state they keep
  cli: 16,
  "": 17, // the package's entry points: index.ts, internals.ts
};

/** One file's relative imports, as paths relative to src/ (posix, `.ts`). */
function importsOf(file: string, source: string): string[] {
  const info = ts.preProcessFile(source, true, true);
  return info.importedFiles
    .map((f) => f.fileName)
    .filter((spec) => spec.startsWith("./") || spec.startsWith("../"))
    .map((spec) => posix.normalize(posix.join(posix.dirname(file), spec)).replace(/\.js$/, ".ts"));
}

/** The layer (folder of LAYERS) a file of src/ belongs to, or undefined when no folder of the table holds it. */
function layerOf(file: string, layers: Readonly<Record<string, number>> = LAYERS): string | undefined {
  let best: string | undefined;
  for (const folder of Object.keys(layers)) {
    const holds = folder === "" ? true : file.startsWith(`${folder}/`);
    if (holds && (best === undefined || folder.length > best.length)) best = folder;
  }
  return best;
}

/** Everything wrong with a graph of files (path relative to src/ -> its relative imports). */
function layerViolations(
  graph: ReadonlyMap<string, readonly string[]>,
  layers: Readonly<Record<string, number>> = LAYERS,
): string[] {
  const found: string[] = [];
  const name = (folder: string) => `${folder === "" ? "src" : `src/${folder}`} (rank ${layers[folder]})`;
  for (const [file, imports] of graph) {
    const from = layerOf(file, layers);
    if (from === undefined) {
      found.push(`src/${file} is in no layer: add its folder to LAYERS in test/layers.test.ts`);
      continue;
    }
    for (const target of imports) {
      const to = layerOf(target, layers);
      if (to === undefined) continue; // reported as that file's own problem (or it does not exist: tsc says so)
      if (layers[to]! > layers[from]!) {
        found.push(`src/${file} imports src/${target}: up from ${name(from)} to ${name(to)}`);
      }
    }
  }
  found.push(...cyclesOf(graph).map((c) => `import cycle: ${c.map((f) => `src/${f}`).join(" -> ")}`));
  return found;
}

/** File cycles (each reported once, from where the depth-first search closed it). */
function cyclesOf(graph: ReadonlyMap<string, readonly string[]>): string[][] {
  const cycles: string[][] = [];
  const state = new Map<string, "open" | "done">();
  const stack: string[] = [];
  const visit = (file: string): void => {
    state.set(file, "open");
    stack.push(file);
    for (const next of graph.get(file) ?? []) {
      if (!graph.has(next)) continue;
      const s = state.get(next);
      if (s === "open") cycles.push([...stack.slice(stack.indexOf(next)), next]);
      else if (s === undefined) visit(next);
    }
    stack.pop();
    state.set(file, "done");
  };
  for (const file of [...graph.keys()].sort()) if (!state.has(file)) visit(file);
  return cycles;
}

function srcGraph(): Map<string, string[]> {
  const graph = new Map<string, string[]>();
  for (const path of tsFiles(SRC)) {
    const file = relative(SRC, path).split(sep).join("/");
    graph.set(file, importsOf(file, readFileSync(path, "utf8")));
  }
  return graph;
}

describe("layers", () => {
  it("src/ imports run down the layers only and no files import each other", () => {
    const graph = srcGraph();
    expect(graph.size).toBeGreaterThan(100);
    // The parser sees the imports (static, export-from, type-only, dynamic): a broken parse finds none.
    expect([...graph.values()].reduce((n, imports) => n + imports.length, 0)).toBeGreaterThan(500);
    expect(layerViolations(graph)).toEqual([]);
  });

  it("the usbredir server imports nothing of USB/IP's (they share src/network-face, not each other)", () => {
    const found: string[] = [];
    for (const path of tsFiles(join(SRC, "usbredir"))) {
      const file = relative(SRC, path).split(sep).join("/");
      const source = readFileSync(path, "utf8");
      for (const target of importsOf(file, source)) {
        if (target.startsWith("usbip/") || target.startsWith("usbip-server/"))
          found.push(`${file} -> ${target}`);
      }
      for (const m of source.matchAll(/\bUsbip\w*/g)) found.push(`${file} names ${m[0]}`);
    }
    expect(found).toEqual([]);
  });

  it("every folder of the table exists", () => {
    const missing = Object.keys(LAYERS).filter((folder) => {
      try {
        return !statSync(join(SRC, folder)).isDirectory();
      } catch {
        return true;
      }
    });
    expect(missing).toEqual([]);
  });

  it("reads every kind of import", () => {
    const source = [
      `import { a } from "./a.js";`,
      `import type { B } from "../rings/b.js";`,
      `export { c } from "./c.js";`,
      `export type * from "./d.js";`,
      `import "./e.js";`,
      `const f = await import("../urb/f.js");`,
      `import { g } from "node:fs";`,
    ].join("\n");
    expect(importsOf("port/x.ts", source)).toEqual([
      "port/a.ts",
      "rings/b.ts",
      "port/c.ts",
      "port/d.ts",
      "port/e.ts",
      "urb/f.ts",
    ]);
  });

  it("names the file, the import and both layers of an upward import, and every cycle", () => {
    const graph = new Map<string, string[]>([
      ["usb/a.ts", ["rings/b.ts"]],
      ["rings/b.ts", ["rings/c.ts"]],
      ["rings/c.ts", ["rings/b.ts"]],
      ["nowhere/d.ts", []],
    ]);
    const layers = { usb: 1, rings: 3 };
    expect(layerViolations(graph, layers)).toEqual([
      "src/usb/a.ts imports src/rings/b.ts: up from src/usb (rank 1) to src/rings (rank 3)",
      "src/nowhere/d.ts is in no layer: add its folder to LAYERS in test/layers.test.ts",
      "import cycle: src/rings/b.ts -> src/rings/c.ts -> src/rings/b.ts",
    ]);
  });
});
