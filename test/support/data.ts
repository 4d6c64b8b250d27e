/** Test payloads shared by every test folder: deterministic bytes, so a mismatch names its seed. */

/** Deterministic bytes for payload checks (xorshift32 from `seed`). */
export function pattern(length: number, seed: number): Uint8Array {
  const out = new Uint8Array(length);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out[i] = x & 0xff;
  }
  return out;
}
