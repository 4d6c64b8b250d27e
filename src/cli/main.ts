#!/usr/bin/env node
/**
 * The `usbvirt` command's entry point; the commands live in run.ts (list,
 * serve, attach, help). Exit status: 0 success, 1 failure, 2 usage error.
 */
import { run } from "./run.js";

run(process.argv.slice(2)).then(
  (code) => {
    // Exit now: everything was released, but the engine's close() leaves a 10 s safety timer armed.
    process.exit(code);
  },
  (err: unknown) => {
    process.stderr.write(`usbvirt: ${String(err)}\n`);
    process.exitCode = 1;
  },
);
