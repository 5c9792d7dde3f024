/**
 * Runs functions one at a time per key, in arrival order; different keys run in parallel.
 * Calls for one target path never interleave, so 50 concurrent publishes of one target make one
 * mount, while publishes of different targets do not wait for each other.
 */
export class KeyedMutex {
  private readonly tails = new Map<string, Promise<void>>();

  async run<T>(key: string, fn: () => Promise<T>): Promise<T> {
    const previous = this.tails.get(key);
    let release = () => {};
    const current = new Promise<void>((resolve) => {
      release = resolve;
    });
    const tail = previous ? previous.then(() => current) : current;
    this.tails.set(key, tail);
    try {
      if (previous) await previous;
      return await fn();
    } finally {
      release();
      if (this.tails.get(key) === tail) this.tails.delete(key);
    }
  }

  /** Keys with a call running or waiting (for tests and diagnostics). */
  get size(): number {
    return this.tails.size;
  }
}
