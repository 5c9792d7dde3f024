/**
 * Collects garbage once the driver has been idle for a moment, and gives the freed memory back.
 * The JavaScript heap otherwise stays at whatever size the last burst of calls left it
 * (swinging by several MB between bursts); a node plugin spends nearly all its time idle, and
 * should do so small. A collection alone frees the objects but keeps their pages and the
 * compiled code of the burst; `Bun.shrink` lets the engine release them when it is next idle
 * (about 8 MB less resident after 10,000 publish/unpublish cycles, docs/benchmarks.md). Under
 * load this costs one timer refresh per call.
 */
export function idleCollector(idleMs: number): () => void {
  let timer: Timer | undefined;
  const collect = () => {
    timer = undefined;
    Bun.gc(true);
    Bun.shrink();
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
