// Tests wait on conditions, never for a fixed time: on a loaded machine anything that spawns a
// process or crosses a socket can take many times longer than on an idle one.

/** How long a test waits for something that takes milliseconds on an idle machine. */
export const PATIENCE_MS = 60_000;

/**
 * Polls `condition` until it returns something other than `false` or `undefined`, and resolves to
 * that. Fails after `timeoutMs` of real time, saying what it waited for (`what` may be a function,
 * to describe the last state seen); an exception thrown by `condition` (e.g. "the process
 * exited") fails at once.
 */
export async function waitFor<T>(
  what: string | (() => string),
  condition: () => T | false | undefined | Promise<T | false | undefined>,
  timeoutMs = PATIENCE_MS,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (let pause = 1; ; pause = Math.min(pause * 2, 100)) {
    const value = await condition();
    if (value !== false && value !== undefined) return value;
    if (Date.now() > deadline)
      throw new Error(
        `waited ${timeoutMs / 1000} s for ${typeof what === "string" ? what : what()}`,
      );
    await Bun.sleep(pause);
  }
}
