/**
 * Start-up runs each module's top level once, and on a node's few cores the JIT compiling it
 * costs more than it saves: while the program loads, the engine compiles 20 times less eagerly
 * (exec to a listening socket about 40 -> 25 ms, docs/benchmarks.md). Imported first by the
 * command, so that it applies before the modules load; `servingPolicy` restores the normal
 * policy before the driver serves, so that calls run compiled code as before. Short commands
 * (probe, doctor) keep the start-up policy to their end.
 */
const STARTUP_JIT_SCALE = 20;

Bun.unsafe.setJITPolicy(STARTUP_JIT_SCALE);

/** The engine's normal JIT policy, for a process that is done loading and will serve. */
export function servingPolicy(): void {
  Bun.unsafe.setJITPolicy(1);
}
