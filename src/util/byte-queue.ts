/**
 * A byte stream's unread bytes as a list of chunks, shared by the network protocols' readers
 * (USB/IP's management phase and client, usbredir). No re-concatenation per read: each operation is
 * linear in the bytes it returns, however TCP segmented the stream.
 */
export class ByteQueue {
  private chunks: Uint8Array[] = [];
  /** Index of the first chunk with unread bytes, and the read offset inside it. */
  private first = 0;
  private head = 0;
  private total = 0;

  get length(): number {
    return this.total;
  }

  push(chunk: Uint8Array): void {
    if (chunk.length === 0) return;
    this.chunks.push(chunk);
    this.total += chunk.length;
  }

  /** The first `n` bytes (n ≤ length), contiguous; a view when they lie in one chunk. */
  peek(n: number): Uint8Array {
    const first = this.chunks[this.first];
    if (first !== undefined && first.length - this.head >= n) return first.subarray(this.head, this.head + n);
    const out = new Uint8Array(n);
    let filled = 0;
    let offset = this.head;
    for (let i = this.first; i < this.chunks.length && filled < n; i++) {
      const c = this.chunks[i]!;
      const take = Math.min(c.length - offset, n - filled);
      out.set(c.subarray(offset, offset + take), filled);
      filled += take;
      offset = 0;
    }
    return out;
  }

  /** Remove and return the first `n` bytes (n ≤ length). */
  take(n: number): Uint8Array {
    const out = this.peek(n);
    this.skip(n);
    return out;
  }

  /** Forget consumed chunks: all of them when the queue is empty, else the prefix in one splice (amortised O(1)). */
  private compact(): void {
    if (this.first === this.chunks.length) this.clear();
    else if (this.first >= 64 && this.first * 2 >= this.chunks.length) {
      this.chunks.splice(0, this.first);
      this.first = 0;
    }
  }

  /** Copy the first `target.length` bytes (≤ length) into `target` without consuming them. */
  peekInto(target: Uint8Array): void {
    let filled = 0;
    let offset = this.head;
    for (let i = this.first; filled < target.length; i++) {
      const c = this.chunks[i]!;
      const take = Math.min(c.length - offset, target.length - filled);
      target.set(c.subarray(offset, offset + take), filled);
      filled += take;
      offset = 0;
    }
  }

  /** Remove the first `target.length` bytes (≤ length) by copying them into `target`: no temporary copy. */
  takeInto(target: Uint8Array): void {
    let filled = 0;
    while (filled < target.length) {
      const c = this.chunks[this.first]!;
      const take = Math.min(c.length - this.head, target.length - filled);
      target.set(c.subarray(this.head, this.head + take), filled);
      filled += take;
      this.head += take;
      if (this.head === c.length) {
        this.first++;
        this.head = 0;
      }
    }
    this.total -= filled;
    this.compact();
  }

  /** Remove up to `n` bytes by copying them to `out[at ..]`; returns how many (no temporary views of Buffers). */
  copyOut(out: Uint8Array, at: number, n: number): number {
    const want = Math.min(n, this.total);
    let done = 0;
    while (done < want) {
      const c = this.chunks[this.first]!;
      const take = Math.min(c.length - this.head, want - done);
      if (Buffer.isBuffer(c)) c.copy(out, at + done, this.head, this.head + take);
      else out.set(c.subarray(this.head, this.head + take), at + done);
      done += take;
      this.head += take;
      if (this.head === c.length) {
        this.first++;
        this.head = 0;
      }
    }
    this.total -= done;
    this.compact();
    return done;
  }

  /** Drop up to `n` bytes; returns how many. */
  dropUpTo(n: number): number {
    const take = Math.min(n, this.total);
    if (take > 0) this.skip(take);
    return take;
  }

  /** Drop the first `n` bytes (n ≤ length). */
  skip(n: number): void {
    let left = n;
    while (left > 0) {
      const c = this.chunks[this.first]!;
      const take = Math.min(c.length - this.head, left);
      left -= take;
      this.head += take;
      if (this.head === c.length) {
        this.first++;
        this.head = 0;
      }
    }
    this.total -= n;
    this.compact();
  }

  /** Copy what is unread into one chunk of its own (the chunks alias a buffer that is about to be reused). */
  detach(): void {
    if (this.total === 0) return;
    const rest = new Uint8Array(this.total);
    this.peekInto(rest);
    this.chunks = [rest];
    this.first = 0;
    this.head = 0;
  }

  clear(): void {
    this.chunks = [];
    this.first = 0;
    this.head = 0;
    this.total = 0;
  }
}
