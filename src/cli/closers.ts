/** Stops one thing that was started, given how long calls in flight may still run. */
export type Closer = (graceMs: number) => Promise<void> | void;

/**
 * What the driver started and must stop, in one stack: each server's closer is pushed as it
 * starts, and closing pops them, the last started first. A start that fails part-way and a
 * SIGTERM both end here, so neither needs its own rollback.
 */
export class Closers {
  private readonly stack: Closer[] = [];

  push(closer: Closer): void {
    this.stack.push(closer);
  }

  /** Closes everything, in reverse order of start; each closer runs once. */
  async closeAll(graceMs: number): Promise<void> {
    for (let closer = this.stack.pop(); closer; closer = this.stack.pop()) {
      await closer(graceMs);
    }
  }
}
