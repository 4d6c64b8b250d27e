#!/usr/bin/env node
/**
 * The `usbvirt` command. Commands that are planned but not built yet answer
 * with a clear error and exit status 2, never silently.
 */
const USAGE = `usbvirt — USB passthrough engine for virtual machine monitors

usage: usbvirt <command> [options]

commands:
  help                 show this text
  list                 list host USB devices and built-in emulated devices   (not built yet)
  serve                export devices over USB/IP                             (not built yet)
  attach HOST BUSID    import a device from a USB/IP server                   (not built yet)
`;

function main(argv: readonly string[]): number {
  const [command] = argv;
  if (command === undefined || command === "help" || command === "--help" || command === "-h") {
    process.stdout.write(USAGE);
    return 0;
  }
  if (command === "list" || command === "serve" || command === "attach") {
    process.stderr.write(`usbvirt: '${command}' is not implemented yet (see the project's open issues)\n`);
    return 2;
  }
  process.stderr.write(`usbvirt: unknown command '${command}'\n\n${USAGE}`);
  return 2;
}

process.exitCode = main(process.argv.slice(2));
