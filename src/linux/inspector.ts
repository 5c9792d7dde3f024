import { readdirSync, readlinkSync, writeSync } from "node:fs";
import type { Subprocess } from "bun";

/**
 * File-system calls on untrusted directories, run in a child process with a deadline.
 *
 * A stat, an extended attribute or a connect in a directory the driver does not own (the SPIFFE
 * agent's) can block for ever: a FUSE file system mounted there that stops answering holds the
 * caller in the kernel, and a request the FUSE server has read but not answered cannot even be
 * killed. Run on the event loop, one such call would stop every RPC, the health port and the
 * shutdown. So these calls run in a child process (this same program, started with
 * `inspector`), one request at a time, answered as lines of JSON over its stdin and stdout:
 *
 * - The child says it is still working at least every PROGRESS_MS while a request runs. When it
 *   has been silent for the inspector's timeout with work pending, it is taken for stuck: it is
 *   killed, every request pending on it fails with an InspectionTimeout that names the files it
 *   held open (where it is stuck), and the next request starts a fresh child.
 * - A killed child that waits on an unanswered FUSE request lives on until the file system
 *   answers or goes away. At most `maxStuck` of them are kept: beyond that, requests fail at once
 *   with InspectionUnavailable instead of leaving more processes behind.
 * - A process-level bound, not a thread: a thread stuck in the kernel would keep the driver from
 *   exiting, a child does not.
 *
 * The operations are a table of functions (see ../cli/inspector.ts), each taking one JSON
 * argument and returning a JSON value (or a promise of one); a thrown error reaches the caller
 * as an InspectionError with the errno's code. Code that needs only some of them takes an
 * `Inspect<{ name: typeof operation }>`.
 */

/** How often a child working on a request says so. */
export const PROGRESS_MS = 250;
/** Killed children still alive beyond which no new one is started. */
export const DEFAULT_MAX_STUCK = 2;
// The end of a child's stderr kept for the message when it dies.
const STDERR_TAIL = 2000;
// A line longer than this from the child is a bug there; the child is replaced.
const MAX_LINE = 16 * 1024 * 1024;

// biome-ignore lint/suspicious/noExplicitAny: each operation declares its own argument type.
export type Operations = Record<string, (args: any) => unknown>;

type Args<Ops extends Operations, K extends keyof Ops> = Parameters<Ops[K]>[0];
type Result<Ops extends Operations, K extends keyof Ops> = Awaited<ReturnType<Ops[K]>>;

/** What a caller needs of the inspector: running one of the operations `Ops`. */
export interface Inspect<Ops extends Operations> {
  /** Runs `op` in the child; `what` says what is done, for messages ("labelling /run/x"). */
  run<K extends keyof Ops & string>(
    op: K,
    args: Args<Ops, K>,
    what?: string,
  ): Promise<Result<Ops, K>>;
}

/** The operation threw in the child (or the child died): its message, and its errno code if any. */
export class InspectionError extends Error {
  override name = "InspectionError";
  constructor(
    message: string,
    readonly code?: string,
  ) {
    super(message);
  }
}

/** The child gave no sign of life for the timeout: it was killed. */
export class InspectionTimeout extends InspectionError {
  override name = "InspectionTimeout";
  constructor(
    readonly what: string,
    readonly timeoutMs: number,
    /** Files the child held open when it was killed: where it was stuck. */
    readonly stuckAt: string[],
  ) {
    super(
      `${what}: no answer within ${timeoutMs / 1000} s${stuckAt.length > 0 ? `, stuck at ${stuckAt.map((path) => JSON.stringify(path)).join(", ")}` : ""} (a file system that does not answer?)`,
      "ETIMEDOUT",
    );
  }
}

/** Earlier children are still stuck in the kernel: nothing new is started until one ends. */
export class InspectionUnavailable extends InspectionError {
  override name = "InspectionUnavailable";
  constructor(
    readonly what: string,
    readonly stuckAt: string[],
  ) {
    super(
      `${what}: not tried, earlier checks are still stuck${stuckAt.length > 0 ? ` at ${stuckAt.map((path) => JSON.stringify(path)).join(", ")}` : ""} (a file system that does not answer?); the driver tries again once they end`,
      "EAGAIN",
    );
  }
}

export interface InspectorOptions {
  /** How long a child working on a request may stay silent before it is taken for stuck. */
  timeoutMs: number;
  /** The child's command line; by default this program, started as `inspector`. */
  command?: string[];
  /** Killed children still alive beyond which requests fail at once. */
  maxStuck?: number;
  /** Told of every child killed for silence (for metrics and the log). */
  onTimeout?: (error: InspectionTimeout) => void;
}

interface Pending {
  what: string;
  resolve: (value: unknown) => void;
  reject: (error: Error) => void;
}

interface Child {
  proc: Subprocess<"pipe", "pipe", "pipe">;
  pending: Map<number, Pending>;
  watchdog?: Timer;
  stderr: string;
}

/** The command that starts this program as an inspector child, compiled or run from source. */
export function inspectorCommand(): string[] {
  // A compiled executable's modules live under /$bunfs/; from source, bun runs the entry point.
  return import.meta.path.startsWith("/$bunfs/")
    ? [process.execPath, "inspector"]
    : [process.execPath, new URL("../main.ts", import.meta.url).pathname, "inspector"];
}

/** Runs operations of the table `Ops` in a child process, bounded in time (see above). */
export class Inspector<Ops extends Operations> implements Inspect<Ops> {
  private child: Child | undefined;
  private readonly stuck = new Set<Subprocess>();
  private stuckAt: string[] = [];
  private nextId = 1;
  private closed = false;
  readonly timeoutMs: number;

  constructor(private readonly options: InspectorOptions) {
    this.timeoutMs = options.timeoutMs;
  }

  /** Runs `op` in the child; `what` says what is done, for messages ("labelling /run/x"). */
  run<K extends keyof Ops & string>(
    op: K,
    args: Args<Ops, K>,
    what: string = op,
  ): Promise<Result<Ops, K>> {
    if (this.closed) return Promise.reject(new InspectionError(`${what}: the driver is stopping`));
    if (this.stuck.size >= (this.options.maxStuck ?? DEFAULT_MAX_STUCK)) {
      return Promise.reject(new InspectionUnavailable(what, this.stuckAt));
    }
    let child: Child;
    try {
      child = this.child ?? this.spawn();
    } catch (error) {
      return Promise.reject(
        new InspectionError(`${what}: cannot start a child process: ${(error as Error).message}`),
      );
    }
    const id = this.nextId++;
    const { promise, resolve, reject } = Promise.withResolvers<Result<Ops, K>>();
    child.pending.set(id, { what, resolve: resolve as (value: unknown) => void, reject });
    child.proc.stdin.write(`${JSON.stringify({ id, op, args })}\n`);
    void child.proc.stdin.flush();
    if (child.pending.size === 1) this.arm(child);
    return promise;
  }

  /** Kills the child; requests pending on it fail. */
  close(): void {
    this.closed = true;
    if (this.child) this.fail(this.child, (what) => new InspectionError(`${what}: stopped`));
  }

  private spawn(): Child {
    const proc = Bun.spawn(this.options.command ?? inspectorCommand(), {
      stdin: "pipe",
      stdout: "pipe",
      stderr: "pipe",
      // Nothing of the driver's environment is needed there.
      env: { PATH: process.env.PATH ?? "/usr/bin:/bin" },
    });
    const child: Child = { proc, pending: new Map(), stderr: "" };
    this.child = child;
    void this.readLines(child);
    void (async () => {
      const decoder = new TextDecoder();
      for await (const chunk of proc.stderr) {
        child.stderr = (child.stderr + decoder.decode(chunk)).slice(-STDERR_TAIL);
      }
    })();
    void proc.exited.then((code) => {
      if (this.child !== child) return;
      this.fail(
        child,
        (what) =>
          new InspectionError(
            `${what}: the inspecting process exited (${code ?? "killed"})${child.stderr ? `: ${child.stderr.trim()}` : ""}`,
          ),
      );
    });
    return child;
  }

  private async readLines(child: Child): Promise<void> {
    const decoder = new TextDecoder();
    let buffered = "";
    for await (const chunk of child.proc.stdout) {
      buffered += decoder.decode(chunk, { stream: true });
      for (let end = buffered.indexOf("\n"); end !== -1; end = buffered.indexOf("\n")) {
        const line = buffered.slice(0, end);
        buffered = buffered.slice(end + 1);
        this.answer(child, line);
      }
      if (buffered.length > MAX_LINE) {
        this.fail(
          child,
          (what) => new InspectionError(`${what}: an answer beyond ${MAX_LINE} bytes`),
        );
        return;
      }
    }
  }

  private answer(child: Child, line: string): void {
    if (this.child !== child) return;
    let message: Answer;
    try {
      message = JSON.parse(line) as Answer;
    } catch {
      this.fail(child, (what) => new InspectionError(`${what}: an answer that is not JSON`));
      return;
    }
    // Any line is a sign of life.
    this.arm(child);
    if ("progress" in message) return;
    const pending = child.pending.get(message.id);
    if (!pending) return;
    child.pending.delete(message.id);
    if (child.pending.size === 0) this.disarm(child);
    if (message.ok) pending.resolve(message.value);
    else pending.reject(new InspectionError(`${pending.what}: ${message.error}`, message.code));
  }

  private arm(child: Child): void {
    this.disarm(child);
    if (child.pending.size === 0) return;
    child.watchdog = setTimeout(() => this.expire(child), this.timeoutMs);
  }

  private disarm(child: Child): void {
    clearTimeout(child.watchdog);
    child.watchdog = undefined;
  }

  /** Silent for the timeout with work pending: stuck. */
  private expire(child: Child): void {
    const stuckAt = openFiles(child.proc.pid);
    this.stuckAt = stuckAt;
    const { proc } = child;
    this.stuck.add(proc);
    void proc.exited.then(() => this.stuck.delete(proc));
    const timeouts: InspectionTimeout[] = [];
    this.fail(child, (what) => {
      const timeout = new InspectionTimeout(what, this.timeoutMs, stuckAt);
      timeouts.push(timeout);
      return timeout;
    });
    for (const timeout of timeouts) this.options.onTimeout?.(timeout);
  }

  /** Kills the child and fails what is pending on it; the next request starts another. */
  private fail(child: Child, error: (what: string) => Error): void {
    this.disarm(child);
    if (this.child === child) this.child = undefined;
    child.proc.kill("SIGKILL");
    const pending = [...child.pending.values()];
    child.pending.clear();
    for (const each of pending) each.reject(error(each.what));
  }
}

type Answer =
  | { id: number; ok: true; value: unknown }
  | { id: number; ok: false; error: string; code?: string }
  | { progress: true };

/** The files a process holds open by path (not pipes, sockets or devices). */
function openFiles(pid: number): string[] {
  const paths = new Set<string>();
  try {
    for (const fd of readdirSync(`/proc/${pid}/fd`)) {
      try {
        const target = readlinkSync(`/proc/${pid}/fd/${fd}`);
        if (target.startsWith("/") && !target.startsWith("/dev/")) paths.add(target);
      } catch {
        // Closed meanwhile.
      }
    }
  } catch {
    // Gone already.
  }
  return [...paths];
}

// The child's side.

let lastSign = 0;
let serving = false;

/** Writes one line to the parent, at once (an operation may hold the event loop meanwhile). */
function send(message: Answer): void {
  const line = Buffer.from(`${JSON.stringify(message)}\n`);
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

/**
 * Says that the request being worked on is progressing; cheap enough to call per entry. Does
 * nothing outside an inspector child.
 */
export function stillWorking(): void {
  if (serving && performance.now() - lastSign >= PROGRESS_MS) send({ progress: true });
}

/** The child's main loop: runs the requests read from stdin, one at a time, until stdin ends. */
export async function serveInspections(operations: Operations): Promise<void> {
  serving = true;
  const decoder = new TextDecoder();
  let buffered = "";
  for await (const chunk of Bun.stdin.stream()) {
    buffered += decoder.decode(chunk, { stream: true });
    for (let end = buffered.indexOf("\n"); end !== -1; end = buffered.indexOf("\n")) {
      const line = buffered.slice(0, end);
      buffered = buffered.slice(end + 1);
      const { id, op, args } = JSON.parse(line) as { id: number; op: string; args: unknown };
      lastSign = performance.now();
      // While an operation awaits (a connect), the loop is free and says so; while one blocks in
      // a system call, it cannot, which is what the parent watches for.
      const heartbeat = setInterval(stillWorking, PROGRESS_MS);
      try {
        const operation = operations[op];
        if (!operation) throw new Error(`no operation ${JSON.stringify(op)}`);
        send({ id, ok: true, value: (await operation(args)) ?? null });
      } catch (error) {
        const { message, code } = error as NodeJS.ErrnoException;
        send({ id, ok: false, error: message, ...(code !== undefined && { code }) });
      } finally {
        clearInterval(heartbeat);
      }
    }
  }
}
