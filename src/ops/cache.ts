/**
 * Wraps an asynchronous computation so that it runs at most once per `ttlMs`: callers while it
 * runs share its promise, and callers within `ttlMs` of its end get its result. A request flood
 * then costs one computation per interval, however many callers there are. A failure is shared
 * by the callers waiting on it but not kept: the next caller computes again.
 */
export function cached<T>(compute: () => Promise<T>, ttlMs: number): () => Promise<T> {
  let value: { result: T; until: number } | undefined;
  let running: Promise<T> | undefined;
  return () => {
    if (value && performance.now() < value.until) return Promise.resolve(value.result);
    running ??= compute()
      .then((result) => {
        value = { result, until: performance.now() + ttlMs };
        return result;
      })
      .finally(() => {
        running = undefined;
      });
    return running;
  };
}
