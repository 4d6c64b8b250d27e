/**
 * src/usb: USB's own vocabulary (USB 2.0 chapter 9 and the words every layer shares): requests and
 * request-type bits, descriptor types, the setup packet and its codec, speeds, transfer kinds, endpoint
 * addresses. A leaf: it imports nothing else of usbvirt (test/usb/vocabulary.test.ts keeps it so), so every
 * layer — rings, URB gate, devices, frontend, servers — can use it without importing another layer.
 */
export * from "./descriptors.js";
export * from "./requests.js";
export * from "./setup.js";
export * from "./speed.js";
export * from "./transfer.js";
