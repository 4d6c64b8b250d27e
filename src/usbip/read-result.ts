/**
 * What a USB/IP frame reader answers: a whole PDU, "need more bytes" (nothing consumed), or malformed —
 * framing is lost and the connection must be dropped. Checks that leave the stream in sync (a bad
 * endpoint, a setup packet that makes no sense) are the server's, answered per URB.
 */

/** A reader's verdict: a whole frame, "need more bytes", or malformed (framing lost: drop the connection). */
export type ReadResult<T> =
  | { readonly kind: "frame"; readonly frame: T }
  | { readonly kind: "need" }
  | { readonly kind: "malformed"; readonly reason: string };

/** "Need more bytes": one shared value, so waiting for bytes allocates nothing. */
export const NEED = { kind: "need" } as const;

/** Framing is lost: `reason` says why, for the log line of the dropped connection. */
export function malformed(reason: string): { kind: "malformed"; reason: string } {
  return { kind: "malformed", reason };
}
