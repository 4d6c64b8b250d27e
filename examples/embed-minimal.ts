// The smallest complete embedding (`npm run example:minimal`; the README shows this file, a test keeps
// them equal): attach the emulated loopback, enumerate it as a guest would, write 4 KiB over bulk OUT
// from guest memory, read it back over bulk IN, close. Exits 0 by itself, 1 if the data differs.
import { Connection, devAddr, endpointNum, GuestUsbDriver, OK, portNum } from "usbvirt";

// The control plane: shared guest memory (4096 frames of 4 KiB), the backend worker, the state machine.
const conn = await Connection.create({ ports: 8, memory: 4096 });
// The guest-facing host controller runs on this thread. Listen before attach, or the connect is missed.
const hcd = conn.frontend!;
hcd.on("portChange", (s) => {
  console.log(
    `port ${s.port}: connected ${s.connected}, enabled ${s.enabled}, reset ${s.resetting}, address ${s.address}`,
  );
});
try {
  await conn.attach(1, { kind: "emulated", name: "loopback" }); // resolves once port 1 shows the device

  // A guest USB core: port reset, SET_ADDRESS, descriptors, SET_CONFIGURATION. Until then URBs get -19.
  const guest = new GuestUsbDriver(hcd, conn.handles);
  const port = portNum(1);
  const device = devAddr(2);
  const info = await guest.enumerate(port, device);
  console.log(`enumerated ${info.vendorId.toString(16)}:${info.productId.toString(16)} "${info.product}"`);

  // URB buffers are ranges of guest memory ({ offset, length }); fill the OUT one through its view.
  const out = guest.buffers.allocate(4096);
  const back = guest.buffers.allocate(4096);
  const data = guest.bytes(out);
  for (let i = 0; i < data.length; i++) data[i] = i & 0xff;
  const bulk = { type: "bulk", port, device, endpoint: endpointNum(1) } as const;
  const w = await hcd.submit({ ...bulk, directionIn: false, buffer: [out] }); // the loopback keeps it...
  const r = await hcd.submit({ ...bulk, directionIn: true, buffer: [back] }); // ...and echoes it on IN
  console.log(`OUT: status ${w.status}, ${w.actualLength} B; IN: status ${r.status}, ${r.actualLength} B`);

  const same = r.status === OK && Buffer.compare(guest.bytes(back), guest.bytes(out)) === 0;
  console.log(same ? "read back what was written" : "the data read back differs");
  if (!same) process.exitCode = 1;
} finally {
  await conn.close(); // detach devices, stop the backend: nothing keeps the process alive after this
}
