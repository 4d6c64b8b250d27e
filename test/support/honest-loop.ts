/**
 * An honest client that moves verified data in rounds for as long as a test attacks something beside
 * it (the fuzz suites, the usbredir hostile tests): its rounds count up while it is served, and the
 * first wrong or failed round ends it with the error kept for the test to assert on.
 */

export class HonestLoop {
  /** Verified rounds so far. */
  rounds = 0;
  /** What ended the loop early, or null. */
  error: unknown = null;
  private running = true;
  private readonly done: Promise<void>;

  /** `round(i)` moves and checks round i (1, 2, …), throwing when it is wrong. */
  constructor(round: (i: number) => Promise<void>) {
    this.done = (async () => {
      let i = 0;
      while (this.running) {
        await round(++i);
        this.rounds++;
      }
    })().catch((err: unknown) => {
      this.error = err;
    });
  }

  async stop(): Promise<void> {
    this.running = false;
    await this.done;
  }
}
