/**
 * Mutual TLS for the network faces (Node's tls; TLS 1.3 only unless told otherwise).
 *
 * Server side (`TlsFace`): a connection the listener admitted (allowlist, connection cap) is handed to a
 * tls.Server that never listens itself; its handshake is bounded by the handshake timeout. Once it is
 * done the client's certificate is checked — present, signed by the client CA and in date (when a CA is
 * given), its SHA-256 fingerprint pinned (when fingerprints are given; both must hold when both are
 * given) — and only then is the connection handed to the protocol, named by its address and identity
 * ("127.0.0.1:40312 (CN=alice)"). A refusal is one log line saying which check failed; that connection
 * alone is dropped, and nothing of the protocol was sent or read on it (a plain-TCP client's first bytes
 * are not a TLS record: it is refused there).
 *
 * The servers have the decrypted records land where a plain connection's reads land (util/read-into.ts:
 * the staging buffer, or straight into the guest buffer of the OUT data due). The cipher suites come in
 * our order, AES-128-GCM first (tls-settings.ts).
 *
 * The client side and the settings both share are src/tls/tls-settings.ts.
 */
import type { Socket } from "node:net";
import {
  createServer as createTlsServer,
  type PeerCertificate,
  type TLSSocket,
  type Server as TlsServer,
} from "node:tls";
import {
  checkVersion,
  fingerprintOf,
  type PemSource,
  PREFERRED_CIPHERS,
  parseFingerprint,
  readPem,
  TlsError,
  type TlsVersion,
} from "../tls/tls-settings.js";
import { escapeControls, type FaceLogger } from "./log.js";

/** A server's TLS settings: its identity, and how client certificates are checked (at least one way). */
export interface TlsServerOptions {
  /** The server's certificate (chain) and private key. */
  readonly cert: PemSource;
  readonly key: PemSource;
  /** CA certificates that sign the clients' certificates: a client must present one they signed, in date. */
  readonly clientCa?: PemSource;
  /** Pinned client certificates: "SHA256:" and the certificate's SHA-256 in hex (colons optional). */
  readonly clientFingerprints?: readonly string[];
  /** Lowest TLS version accepted (default TLSv1.3). */
  readonly minVersion?: TlsVersion;
}

/** Longest certificate subject kept in a peer's name. */
const IDENTITY_MAX = 64;

/** How a peer's certificate names it: its CN (escaped, cut), else its fingerprint. */
export function identityOf(cert: PeerCertificate): string {
  const cn = cert.subject?.CN;
  const name = Array.isArray(cn) ? cn[0] : cn;
  if (typeof name === "string" && name.length > 0) {
    const cut = name.length > IDENTITY_MAX ? `${name.slice(0, IDENTITY_MAX)}…` : name;
    return `CN=${escapeControls(cut)}`;
  }
  return fingerprintOf(cert);
}

/** Why a certificate that did not verify against the CA was refused, in words. */
function verifyReason(code: string): string {
  switch (code) {
    case "CERT_HAS_EXPIRED":
      return "it has expired";
    case "CERT_NOT_YET_VALID":
      return "it is not valid yet";
    case "UNABLE_TO_VERIFY_LEAF_SIGNATURE":
    case "UNABLE_TO_GET_ISSUER_CERT":
    case "UNABLE_TO_GET_ISSUER_CERT_LOCALLY":
    case "DEPTH_ZERO_SELF_SIGNED_CERT":
    case "SELF_SIGNED_CERT_IN_CHAIN":
    case "CERT_SIGNATURE_FAILURE":
      return "it is not signed by the client CA";
    case "CERT_REVOKED":
      return "it is revoked";
    default:
      return "it does not verify";
  }
}

/** Why a handshake failed, in words (the OpenSSL code follows in the log line). */
function handshakeReason(err: NodeJS.ErrnoException, minVersion: TlsVersion, handshakeMs: number): string {
  switch (err.code) {
    case "ERR_SSL_WRONG_VERSION_NUMBER":
    case "ERR_SSL_HTTP_REQUEST":
    case "ERR_SSL_UNKNOWN_PROTOCOL":
    case "ERR_SSL_PACKET_LENGTH_TOO_LONG":
    case "ERR_SSL_RECORD_LENGTH_MISMATCH":
      return "not a TLS client (plain TCP?)";
    case "ERR_SSL_UNSUPPORTED_PROTOCOL":
    case "ERR_SSL_NO_PROTOCOLS_AVAILABLE":
      return `the client offers no TLS version this server accepts (${minVersion} or later)`;
    case "ERR_TLS_HANDSHAKE_TIMEOUT":
      return `TLS handshake not done within ${handshakeMs} ms`;
    case "ECONNRESET":
    case "EPIPE":
      return "the client closed the connection during the TLS handshake";
    default:
      return "TLS handshake failed";
  }
}

/** What a TLS face does with a connection whose handshake it started. */
export interface TlsHandoff {
  /** The handshake is done and the client's certificate passed: go on with `socket`, named `peer`. */
  secure(socket: TLSSocket, peer: string): void;
  /** The connection was refused (logged) and destroyed. */
  refused(): void;
}

/** Checked server settings: the secure context's options and the pinned fingerprints. */
export interface TlsServerSettings {
  readonly context: { cert: string | Buffer; key: string | Buffer; ca?: string | Buffer };
  readonly pinned: ReadonlySet<string> | null;
  readonly verifyCa: boolean;
  readonly minVersion: TlsVersion;
}

/** Check a server's TLS settings and read its files (before anything starts); a TlsError says what is wrong. */
export function checkTlsServerOptions(o: TlsServerOptions): TlsServerSettings {
  if (o.cert === undefined || o.key === undefined) {
    throw new TlsError("ERR_USBVIRT_TLS_OPTIONS", "TLS needs both the server's certificate and its key");
  }
  const pins = o.clientFingerprints ?? [];
  if (o.clientCa === undefined && pins.length === 0) {
    throw new TlsError(
      "ERR_USBVIRT_TLS_OPTIONS",
      "TLS on a server needs a way to check clients: a client CA and/or pinned client fingerprints",
    );
  }
  const context: TlsServerSettings["context"] = {
    cert: readPem(o.cert, "the TLS certificate"),
    key: readPem(o.key, "the TLS key"),
  };
  if (o.clientCa !== undefined) context.ca = readPem(o.clientCa, "the client CA");
  return {
    context,
    pinned: pins.length > 0 ? new Set(pins.map(parseFingerprint)) : null,
    verifyCa: o.clientCa !== undefined,
    minVersion: checkVersion(o.minVersion),
  };
}

/** The TLS side of a server: handshakes on admitted connections, client certificates checked. */
export class TlsFace {
  private readonly server: TlsServer;
  /** Connections whose handshake is under way. */
  private readonly waiting = new Map<Socket, { peer: string; handoff: TlsHandoff }>();

  constructor(
    private readonly settings: TlsServerSettings,
    private readonly handshakeMs: number,
    private readonly log: FaceLogger,
  ) {
    let server: TlsServer;
    try {
      server = createTlsServer({
        ...settings.context,
        minVersion: settings.minVersion,
        ciphers: PREFERRED_CIPHERS,
        honorCipherOrder: true,
        requestCert: true,
        // Checked on 'secureConnection' below, so a refusal says which check failed.
        rejectUnauthorized: false,
        handshakeTimeout: handshakeMs,
      });
    } catch (err) {
      throw new TlsError("ERR_USBVIRT_TLS_OPTIONS", `TLS settings refused: ${(err as Error).message}`, {
        cause: err,
      });
    }
    this.server = server;
    server.on("secureConnection", (socket: TLSSocket) => this.secured(socket));
    server.on("tlsClientError", (err: NodeJS.ErrnoException, socket: TLSSocket) => {
      const w = this.take(socket);
      if (w === null) return;
      const code = err.code ?? "?";
      const reason = handshakeReason(err, this.settings.minVersion, this.handshakeMs);
      this.log.warn(`${w.peer}: TLS refused: ${reason} (${code})`, { client: w.peer });
      socket.destroy();
      w.handoff.refused();
    });
  }

  /** What the minimum version is, for the status page and warnings. */
  get minVersion(): TlsVersion {
    return this.settings.minVersion;
  }

  /** Start the handshake on `raw` (admitted, paused); `handoff` hears how it ended. */
  handshake(raw: Socket, peer: string, handoff: TlsHandoff): void {
    this.waiting.set(raw, { peer, handoff });
    raw.once("close", () => {
      const w = this.waiting.get(raw);
      if (w === undefined) return;
      this.waiting.delete(raw);
      this.log.warn(`${w.peer}: TLS refused: the client closed the connection during the TLS handshake`, {
        client: w.peer,
      });
      w.handoff.refused();
    });
    this.server.emit("connection", raw);
  }

  /** Handshakes under way now. */
  get handshaking(): number {
    return this.waiting.size;
  }

  /** End every handshake under way (the server is closing). */
  close(): void {
    for (const [raw, w] of [...this.waiting]) {
      this.waiting.delete(raw);
      raw.destroy();
      w.handoff.refused();
    }
  }

  private take(socket: TLSSocket): { peer: string; handoff: TlsHandoff } | null {
    // The TLS socket wraps the admitted one; tls.Server hands out only the former.
    const raw = (socket as unknown as { _parent?: Socket })._parent;
    if (raw === undefined) return null;
    const w = this.waiting.get(raw) ?? null;
    this.waiting.delete(raw);
    return w;
  }

  private secured(socket: TLSSocket): void {
    const w = this.take(socket);
    if (w === null) {
      socket.destroy();
      return;
    }
    const refuse = (why: string) => {
      this.log.warn(`${w.peer}: TLS refused: ${why}`, { client: w.peer });
      socket.destroy();
      w.handoff.refused();
    };
    const cert = socket.getPeerCertificate();
    if (cert === null || cert.raw === undefined || cert.fingerprint256 === undefined) {
      refuse("no client certificate");
      return;
    }
    const fp = fingerprintOf(cert);
    const who = `${identityOf(cert)}, ${fp}`;
    if (this.settings.verifyCa && !socket.authorized) {
      const code = String(socket.authorizationError ?? "?");
      refuse(`client certificate ${who} refused: ${verifyReason(code)} (${code})`);
      return;
    }
    if (this.settings.pinned !== null) {
      if (!this.settings.pinned.has(fp)) {
        refuse(`client certificate ${who} is not pinned (not among the client fingerprints)`);
        return;
      }
      if (!this.settings.verifyCa) {
        const now = Date.now();
        if (Date.parse(cert.valid_to) < now) {
          refuse(`client certificate ${who} refused: it has expired (${cert.valid_to})`);
          return;
        }
        if (Date.parse(cert.valid_from) > now) {
          refuse(`client certificate ${who} refused: it is not valid yet (${cert.valid_from})`);
          return;
        }
      }
    }
    socket.pause();
    w.handoff.secure(socket, `${w.peer} (${identityOf(cert)})`);
  }
}
