/**
 * Certificates for the benches' mutual-TLS runs, made with `openssl` in a temporary folder for the run: a
 * CA, a server certificate for localhost and 127.0.0.1, a client certificate (EC P-256, as the README's
 * how-to makes them). PEM text, so a bench client process gets them over IPC.
 */
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

export interface BenchPki {
  readonly ca: string;
  readonly serverCert: string;
  readonly serverKey: string;
  readonly clientCert: string;
  readonly clientKey: string;
}

export function makeBenchPki(): BenchPki {
  const dir = mkdtempSync(join(tmpdir(), "usbvirt-bench-tls-"));
  const ssl = (args: string[]) =>
    execFileSync("openssl", args, { cwd: dir, stdio: ["ignore", "ignore", "pipe"] });
  const ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
  try {
    ssl([
      "req",
      "-x509",
      ...ec,
      "-keyout",
      "ca.key",
      "-out",
      "ca.pem",
      "-days",
      "1",
      "-subj",
      "/CN=bench CA",
    ]);
    writeFileSync(join(dir, "san.ext"), "subjectAltName=DNS:localhost,IP:127.0.0.1\n");
    for (const [name, ext] of [
      ["server", ["-extfile", "san.ext"]],
      ["client", []],
    ] as const) {
      ssl(["req", ...ec, "-keyout", `${name}.key`, "-out", `${name}.csr`, "-subj", `/CN=bench ${name}`]);
      ssl([
        "x509",
        "-req",
        "-in",
        `${name}.csr`,
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        `${name}.pem`,
        "-days",
        "1",
        ...ext,
      ]);
    }
    const read = (f: string) => readFileSync(join(dir, f), "utf8");
    return {
      ca: read("ca.pem"),
      serverCert: read("server.pem"),
      serverKey: read("server.key"),
      clientCert: read("client.pem"),
      clientKey: read("client.key"),
    };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** What a bench client needs to connect with mutual TLS (PEM text). */
export interface ClientTls {
  readonly ca: string;
  readonly cert: string;
  readonly key: string;
}

export function clientTlsOf(pki: BenchPki): ClientTls {
  return { ca: pki.ca, cert: pki.clientCert, key: pki.clientKey };
}
