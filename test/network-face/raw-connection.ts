/**
 * A raw TCP connection to a server on 127.0.0.1, as an attacker holds one: it writes whatever bytes the
 * test gives it, keeps every byte the server sends, and knows when the server closed it.
 */
import { connect, type Socket } from "node:net";
import { eventually } from "../support/eventually.js";

export class RawConnection {
  received = Buffer.alloc(0);
  closed = false;
  /** "127.0.0.1:PORT" as the server's log names this connection (taken at connect: a closed socket has no port). */
  readonly name: string;
  private constructor(readonly socket: Socket) {
    this.name = `127.0.0.1:${socket.localPort}`;
    socket.on("data", (d: Buffer) => {
      this.received = Buffer.concat([this.received, d]);
    });
    socket.on("error", () => undefined);
    socket.once("close", () => {
      this.closed = true;
    });
  }

  static async open(port: number): Promise<RawConnection> {
    const socket = connect({ host: "127.0.0.1", port, noDelay: true });
    await new Promise<void>((resolve, reject) => {
      socket.once("connect", resolve);
      socket.once("error", reject);
    });
    return new RawConnection(socket);
  }

  write(bytes: Uint8Array): void {
    this.socket.write(bytes);
  }

  /** Wait until the server closed the connection; `what` names the expectation in the failure. */
  async closedBy(ms: number, what: string): Promise<void> {
    await eventually(() => this.closed, ms, what);
  }

  destroy(): void {
    this.socket.destroy();
  }
}
