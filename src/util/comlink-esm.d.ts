// comlink ships no `exports` map: Node's ESM loader must be pointed at its .mjs builds,
// whose types are the package's own d.ts files.
declare module "comlink/dist/esm/comlink.mjs" {
  export * from "comlink";
}
declare module "comlink/dist/esm/node-adapter.mjs" {
  import type { Endpoint } from "comlink";
  import type { NodeEndpoint } from "comlink/dist/umd/node-adapter.js";
  export default function nodeEndpoint(nep: NodeEndpoint): Endpoint;
}
