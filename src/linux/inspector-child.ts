import { writeSync } from "node:fs";
import {
  type Answer,
  MAX_ANSWER,
  type Operations,
  PROGRESS_MS,
  type Request,
} from "./inspector-protocol.ts";

/**
 * The inspector's child (./inspector.ts is the parent): runs the requests read from stdin, one at
 * a time, and answers each on stdout, until stdin ends.
 *
 * While a request runs, the runtime says "progress" at least every PROGRESS_MS, and nothing else
 * does: a file system that does not answer holds the child's only thread in a system call, so the
 * signs stop exactly then, and the parent takes the child for stuck. Two sources, both here:
 * - a timer, for what awaits (a connection to a socket): the event loop is free meanwhile;
 * - the steps of a generator operation: a loop of synchronous calls (a hundred thousand entries
 *   labelled, one by one) yields after each, and the runtime signs between steps when a sign is
 *   due. A slow loop that moves is never taken for stuck; a single call that hangs is.
 * So an operation makes every call that may hang synchronously: an await of a call that hangs on
 * the thread pool would leave the event loop free, and the timer signing for it. Nothing but
 * Node's file-system module is loaded here: the child carries only its operations.
 */

let lastSign = 0;

/** Writes one line to the parent, at once (an operation may hold the event loop meanwhile). */
function send(message: Answer): void {
  let text = JSON.stringify(message);
  if (text.length > MAX_ANSWER && "id" in message) {
    text = JSON.stringify({
      id: message.id,
      ok: false,
      error: `an answer of ${text.length} bytes, beyond the ${MAX_ANSWER} an inspection may send`,
      code: "E2BIG",
    } satisfies Answer);
  }
  const line = Buffer.from(`${text}\n`);
  for (let offset = 0; offset < line.length; ) {
    try {
      offset += writeSync(1, line, offset);
    } catch (error) {
      // A non-blocking pipe that is full: the parent reads it soon.
      if ((error as NodeJS.ErrnoException).code !== "EAGAIN") throw error;
      Bun.sleepSync(1);
    }
  }
  lastSign = performance.now();
}

function signIfDue(): void {
  if (performance.now() - lastSign >= PROGRESS_MS) send({ progress: true });
}

type Steps = Iterator<unknown, unknown, undefined> | AsyncIterator<unknown, unknown, undefined>;

function isSteps(value: unknown): value is Steps {
  return (
    typeof value === "object" &&
    value !== null &&
    typeof (value as Steps).next === "function" &&
    (Symbol.iterator in value || Symbol.asyncIterator in value)
  );
}

/** Runs a generator operation to its end, signing between its steps. */
async function runSteps(steps: Steps): Promise<unknown> {
  const sync = Symbol.iterator in steps;
  for (;;) {
    const step = sync ? (steps as Iterator<unknown>).next() : await steps.next();
    if (step.done) return step.value;
    signIfDue();
  }
}

async function perform(operations: Operations, request: Request): Promise<void> {
  const { id, op, args } = request;
  lastSign = performance.now();
  const timer = setInterval(signIfDue, PROGRESS_MS);
  try {
    const operation = operations[op];
    if (!operation) throw new Error(`no operation ${JSON.stringify(op)}`);
    const started = operation(args);
    const value = isSteps(started) ? await runSteps(started) : await started;
    send({ id, ok: true, value: value ?? null });
  } catch (error) {
    const { message, code } = error as NodeJS.ErrnoException;
    send({ id, ok: false, error: message, ...(code !== undefined && { code }) });
  } finally {
    clearInterval(timer);
  }
}

/** The child's main loop: runs the requests read from stdin, one at a time, until stdin ends. */
export async function serveInspections(operations: Operations): Promise<void> {
  // Ready: from now on the parent counts silence against its deadline.
  send({ progress: true });
  const decoder = new TextDecoder();
  let buffered = "";
  for await (const chunk of Bun.stdin.stream()) {
    buffered += decoder.decode(chunk, { stream: true });
    for (let end = buffered.indexOf("\n"); end !== -1; end = buffered.indexOf("\n")) {
      const line = buffered.slice(0, end);
      buffered = buffered.slice(end + 1);
      await perform(operations, JSON.parse(line) as Request);
    }
  }
}
