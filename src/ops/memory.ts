/**
 * Collects garbage once the driver has been idle for a moment. The JavaScript heap otherwise stays
 * at whatever size the last burst of calls left it (swinging by several MB between bursts); a
 * node plugin spends nearly all its time idle, and should do so small. Under load this costs one
 * timer refresh per call.
 */
export function idleCollector(idleMs: number): () => void {
  let timer: Timer | undefined;
  const collect = () => {
    timer = undefined;
    Bun.gc(true);
  };
  return () => {
    if (timer) {
      timer.refresh();
    } else {
      timer = setTimeout(collect, idleMs);
      // Never the reason the process stays alive.
      timer.unref();
    }
  };
}
