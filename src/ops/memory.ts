// After this long without a call the driver is at rest: the memory of the last burst goes back.
const REST_MS = 30_000;

/**
 * Collects garbage once the driver has been idle for a moment, and gives the freed memory back
 * once it is at rest. The JavaScript heap otherwise stays at whatever size the last burst of
 * calls left it (swinging by several MB between bursts); a node plugin spends nearly all its time
 * idle, and should do so small. A collection frees the objects but keeps their pages and the
 * burst's compiled code; `Bun.shrink` releases them too (about 8 MB less resident after 10,000
 * publish/unpublish cycles, docs/benchmarks.md). It runs only at rest, not after every idle
 * second: the next calls would run uncompiled code again, a re-publish twice as slow for its
 * first few hundred calls. Under load this costs one timer refresh per call.
 */
export function idleCollector(idleMs: number, restMs = REST_MS): () => void {
  let timer: Timer | undefined;
  let collected = false;
  const later = (run: () => void, ms: number) => {
    timer = setTimeout(run, ms);
    // Never the reason the process stays alive.
    timer.unref();
  };
  const shrink = () => {
    timer = undefined;
    Bun.shrink();
  };
  const collect = () => {
    Bun.gc(true);
    collected = true;
    later(shrink, Math.max(restMs - idleMs, 0));
  };
  return () => {
    if (timer && !collected) {
      timer.refresh();
      return;
    }
    clearTimeout(timer);
    collected = false;
    later(collect, idleMs);
  };
}
