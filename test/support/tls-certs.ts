/**
 * Certificates for TLS tests, made with `openssl` in a temporary folder (never committed): a CA, a server
 * certificate for localhost and 127.0.0.1, client certificates it signed (one in date, one expired), one a
 * second CA signed, and a self-signed one for pinning. EC P-256 keys: fast to make.
 */
import { execFileSync } from "node:child_process";
import { X509Certificate } from "node:crypto";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { command, need, type Tool } from "./tools.js";

/** A certificate and its key (file paths), and its fingerprint as parseFingerprint writes it. */
export interface CertFiles {
  readonly cert: string;
  readonly key: string;
  readonly fingerprint: string;
}

export interface TestPki {
  readonly dir: string;
  /** The CA (cert, key) that signs server and clients. */
  readonly ca: CertFiles;
  readonly server: CertFiles;
  /** Signed by the CA, in date, CN=alice. */
  readonly client: CertFiles;
  /** Signed by the CA, expired in 2020, CN=old. */
  readonly expired: CertFiles;
  /** Signed by another CA, CN=mallory. */
  readonly otherCa: CertFiles;
  /** Self-signed, CN=pinned (for fingerprint pinning). */
  readonly selfSigned: CertFiles;
  /**
   * QEMU's tls-creds-x509 layout for a client (ca-cert.pem, client-cert.pem, client-key.pem) with `who`'s
   * certificate; ca-cert.pem holds both CAs (QEMU checks its own certificate against it at start, and
   * the server's).
   */
  qemuClientDir(who: CertFiles, name: string): string;
  remove(): void;
}

/** openssl, which makes the certificates: a test that calls makeTestPki skips through skipWithout without it. */
export function opensslTool(): Tool<string> {
  return command(["openssl"], "apt-get install openssl");
}

function openssl(dir: string, args: string[]): void {
  execFileSync(need(opensslTool()), args, { cwd: dir, stdio: ["ignore", "ignore", "pipe"] });
}

function fingerprint(file: string): string {
  return `SHA256:${new X509Certificate(readFileSync(file)).fingerprint256}`;
}

const EC = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];

export function makeTestPki(): TestPki {
  const dir = mkdtempSync(join(tmpdir(), "usbvirt-tls-"));
  const files = (name: string): CertFiles => ({
    cert: join(dir, `${name}.pem`),
    key: join(dir, `${name}.key`),
    fingerprint: fingerprint(join(dir, `${name}.pem`)),
  });
  const selfSigned = (name: string, cn: string) =>
    openssl(dir, [
      "req",
      "-x509",
      ...EC,
      "-keyout",
      `${name}.key`,
      "-out",
      `${name}.pem`,
      "-days",
      "2",
      "-subj",
      `/CN=${cn}`,
    ]);
  const signed = (name: string, cn: string, ca: string, ext: string[] = []) => {
    openssl(dir, ["req", ...EC, "-keyout", `${name}.key`, "-out", `${name}.csr`, "-subj", `/CN=${cn}`]);
    openssl(dir, [
      "x509",
      "-req",
      "-in",
      `${name}.csr`,
      "-CA",
      `${ca}.pem`,
      "-CAkey",
      `${ca}.key`,
      "-CAcreateserial",
      "-out",
      `${name}.pem`,
      "-days",
      "2",
      ...ext,
    ]);
  };
  selfSigned("ca", "usbvirt test CA");
  selfSigned("other-ca", "another CA");
  selfSigned("pinned", "pinned");
  writeFileSync(join(dir, "san.ext"), "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1\n");
  signed("server", "localhost", "ca", ["-extfile", "san.ext"]);
  signed("client", "alice", "ca");
  signed("mallory", "mallory", "other-ca");
  // An expired certificate: `openssl ca` takes explicit dates (x509 -req only counts days from now).
  openssl(dir, ["req", ...EC, "-keyout", "old.key", "-out", "old.csr", "-subj", "/CN=old"]);
  mkdirSync(join(dir, "cadb"));
  writeFileSync(join(dir, "cadb", "index.txt"), "");
  writeFileSync(join(dir, "cadb", "serial"), "1000\n");
  writeFileSync(
    join(dir, "ca.cnf"),
    "[ca]\ndefault_ca = d\n[d]\ndatabase = cadb/index.txt\nnew_certs_dir = cadb\nserial = cadb/serial\n" +
      "default_md = sha256\npolicy = p\nunique_subject = no\n[p]\ncommonName = supplied\n",
  );
  openssl(dir, [
    "ca",
    "-config",
    "ca.cnf",
    "-batch",
    "-notext",
    "-keyfile",
    "ca.key",
    "-cert",
    "ca.pem",
    "-startdate",
    "20200101000000Z",
    "-enddate",
    "20200102000000Z",
    "-in",
    "old.csr",
    "-out",
    "old.pem",
  ]);
  return {
    dir,
    ca: files("ca"),
    server: files("server"),
    client: files("client"),
    expired: files("old"),
    otherCa: files("mallory"),
    selfSigned: files("pinned"),
    qemuClientDir(who, name) {
      const d = join(dir, name);
      mkdirSync(d, { recursive: true });
      writeFileSync(
        join(d, "ca-cert.pem"),
        Buffer.concat([readFileSync(join(dir, "ca.pem")), readFileSync(join(dir, "other-ca.pem"))]),
      );
      writeFileSync(join(d, "client-cert.pem"), readFileSync(who.cert));
      writeFileSync(join(d, "client-key.pem"), readFileSync(who.key));
      return d;
    },
    remove() {
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
