import { readdirSync, readFileSync, readlinkSync } from "node:fs";
import { normalize } from "node:path";
import type { Subprocess } from "bun";
import {
  type Answer,
  type Args,
  MAX_ANSWER,
  type Operations,
  type Result,
} from "./inspector-protocol.ts";

/**
 * File-system calls on untrusted directories, run in child processes with a deadline: the parent's
 * side (./inspector-child.ts is the child's, ./inspector-protocol.ts what they say).
 *
 * A stat, an extended attribute or a connect in a directory the driver does not own (the SPIFFE
 * agent's) can block for ever: a FUSE file system mounted there that stops answering holds the
 * caller in the kernel, and a request the FUSE server has read but not answered cannot even be
 * killed. Run on the event loop, one such call would stop every RPC, the health port and the
 * shutdown. So these calls run in a child process (the program that owns the operations, started
 * by the command it gives), answered as lines of JSON over its stdin and stdout:
 *
 * - Lazy and short-lived: a child starts when a request needs one, runs one request at a time,
 *   and exits once idle for IDLE_EXIT_MS, so a driver at rest is one process. Up to MAX_WORKING
 *   children work at once: a check of a volume does not wait behind a long survey of the directory.
 *   Requests wait in the parent's queue, and an identical request (same operation, same
 *   arguments) that waits there already is shared, not repeated; a running one is not joined, it
 *   started before the caller asked.
 * - The child says it is still working at least every PROGRESS_MS while a request runs. Silent for
 *   the timeout, it is taken for stuck: it is killed, the request fails with an InspectionTimeout
 *   that names the files it held open (where it is stuck), and the next request gets a fresh
 *   child. A child's start is not counted against the timeout (START_MS more): it touches nothing
 *   before it says it is ready.
 * - A killed child that waits on an unanswered FUSE request lives on until the file system
 *   answers or goes away, and is forgotten once it ends. Such a child holds only what it was
 *   about: the paths of its request (a descriptor's /proc path read as the file it leads to) and
 *   the files it held open. A request about any of those (the same path, one inside it or one that
 *   contains it) fails at once with InspectionUnavailable once `maxStuck` children are stuck there
 *   (it would hang at the same place, and each try would leave one more process behind); a request
 *   about anything else gets a fresh child. MAX_STUCK_IN_ALL bounds the stuck children of all
 *   subjects together: whatever a broken node does, the driver's children stay bounded
 *   (MAX_WORKING working, MAX_STUCK_IN_ALL stuck).
 * - Processes, not threads: a thread stuck in the kernel would keep the driver from exiting, a
 *   child does not. close() kills every child and names those that stay (stuck in the kernel).
 *
 * The operations are a table of functions (./inspector-protocol.ts); code that needs only some of
 * them takes an `Inspect<{ name: typeof operation }>`.
 */

/** A child with nothing to do exits after this long: the driver at rest is one process. */
export const IDLE_EXIT_MS = 30_000;
/** Children working on requests at once (two cores on a small node; each is a process). */
export const MAX_WORKING = 2;
/** Stuck children about overlapping paths beyond which a request about them is refused at once. */
export const DEFAULT_MAX_STUCK = 2;
/** Stuck children in all beyond which every request is refused at once. */
export const MAX_STUCK_IN_ALL = 4;
// A child's start (exec, and its modules loaded) may take this long beyond the timeout on a busy
// node: it touches nothing untrusted before it says it is ready.
const START_MS = 10_000;
// close() waits this long for the killed children to end before naming those that stay.
const CLOSE_WAIT_MS = 1_000;
// The end of a child's stderr kept for the message when it dies.
const STDERR_TAIL = 2000;
// A longer line from the child is a bug there (it bounds its answers): the child is replaced.
const MAX_LINE = MAX_ANSWER + 1024;

/** What a caller needs of the inspector: running one of the operations `Ops`. */
export interface Inspect<Ops extends Operations> {
  /** Runs `op` in a child; `what` says what is done, for messages ("labelling /run/x"). */
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
      `${what}: no answer within ${timeoutMs / 1000} s${stuckAt.length > 0 ? `, stuck at ${quoted(stuckAt)}` : ""} (a file system that does not answer?)`,
      "ETIMEDOUT",
    );
  }
}

/** Earlier children are still stuck where this request would go: it is not tried. */
export class InspectionUnavailable extends InspectionError {
  override name = "InspectionUnavailable";
  constructor(
    readonly what: string,
    readonly stuckAt: string[],
  ) {
    super(
      `${what}: not tried, earlier checks are still stuck${stuckAt.length > 0 ? ` at ${quoted(stuckAt)}` : ""} (a file system that does not answer?); the driver tries again once they end`,
      "EAGAIN",
    );
  }
}

/** A child that outlived close(): stuck in the kernel. */
export interface LeftBehind {
  pid: number;
  /** Where it was stuck (the files it held open). */
  stuckAt: string[];
  /** Its state and where it waits in the kernel: "D request_wait_answer", say. */
  state: string;
}

export interface InspectorOptions {
  /** How long a child working on a request may stay silent before it is taken for stuck. */
  timeoutMs: number;
  /** The child's command line: a program that serves the operations (./inspector-child.ts). */
  command: string[];
  /** Stuck children about overlapping paths beyond which requests about them fail at once. */
  maxStuck?: number;
  /** Stuck children in all beyond which every request fails at once. */
  maxStuckInAll?: number;
  /** How long a child may have nothing to do before it exits. */
  idleMs?: number;
  /** Told of every child killed for silence (for metrics and the log). */
  onTimeout?: (error: InspectionTimeout) => void;
  /** Told by close() of the children that stay, stuck in the kernel (for the log). */
  onLeftBehind?: (children: LeftBehind[]) => void;
}

interface Waiter {
  what: string;
  resolve: (value: unknown) => void;
  reject: (error: Error) => void;
}

/** A request, and every caller waiting for it. */
interface Job {
  key: string;
  op: string;
  args: unknown;
  /** The paths it is about. */
  subject: string[];
  waiters: Waiter[];
}

interface Worker {
  proc: Subprocess<"pipe", "pipe", "pipe">;
  /** It said something: started. */
  ready: boolean;
  job?: Job;
  jobId?: number;
  watchdog?: Timer;
  idle?: Timer;
  stderr: string;
}

interface Stuck {
  proc: Subprocess;
  /** What it was about: its request's paths and the files it held open. */
  subject: string[];
  stuckAt: string[];
}

/** Runs operations of the table `Ops` in child processes, bounded in time (see above). */
export class Inspector<Ops extends Operations> implements Inspect<Ops> {
  private readonly workers: Worker[] = [];
  private readonly queue: Job[] = [];
  private readonly stuck = new Set<Stuck>();
  private nextId = 1;
  private closed = false;
  readonly timeoutMs: number;

  constructor(private readonly options: InspectorOptions) {
    this.timeoutMs = options.timeoutMs;
  }

  /** Runs `op` in a child; `what` says what is done, for messages ("labelling /run/x"). */
  run<K extends keyof Ops & string>(
    op: K,
    args: Args<Ops, K>,
    what: string = op,
  ): Promise<Result<Ops, K>> {
    if (this.closed) return Promise.reject(new InspectionError(`${what}: the driver is stopping`));
    const { promise, resolve, reject } = Promise.withResolvers<Result<Ops, K>>();
    const waiter = { what, resolve: resolve as (value: unknown) => void, reject };
    const key = `${op} ${JSON.stringify(args)}`;
    const waiting = this.queue.find((job) => job.key === key);
    if (waiting) {
      waiting.waiters.push(waiter);
      return promise;
    }
    const subject = subjectOf(args);
    const stuckAt = this.blockedAt(subject);
    if (stuckAt) return Promise.reject(new InspectionUnavailable(what, stuckAt));
    this.queue.push({ key, op, args, subject, waiters: [waiter] });
    this.dispatch();
    return promise;
  }

  /**
   * Kills every child; requests pending fail. Resolves once they have ended, or after
   * CLOSE_WAIT_MS, telling onLeftBehind of those that stay (stuck in the kernel).
   */
  async close(): Promise<void> {
    this.closed = true;
    const stopped = (what: string) => new InspectionError(`${what}: stopped`);
    for (const job of this.queue.splice(0)) settle(job, stopped);
    const ending: { proc: Subprocess; stuckAt: string[] }[] = [...this.stuck];
    for (const worker of this.workers.splice(0)) {
      ending.push({ proc: worker.proc, stuckAt: worker.job ? openFiles(worker.proc.pid) : [] });
      this.stop(worker);
      if (worker.job) settle(worker.job, stopped);
    }
    const alive = ending.filter(({ proc }) => proc.exitCode === null && proc.signalCode === null);
    if (alive.length === 0) return;
    await Promise.race([
      Promise.all(alive.map(({ proc }) => proc.exited)),
      new Promise((resolve) => setTimeout(resolve, CLOSE_WAIT_MS).unref()),
    ]);
    const left = alive
      .filter(({ proc }) => proc.exitCode === null && proc.signalCode === null)
      .map(({ proc, stuckAt }) => ({ pid: proc.pid, stuckAt, state: processState(proc.pid) }));
    if (left.length > 0) this.options.onLeftBehind?.(left);
  }

  /** Where children are stuck that bar a request about `subject`, or undefined. */
  private blockedAt(subject: string[]): string[] | undefined {
    const stuck = [...this.stuck];
    const there = stuck.filter((each) => overlaps(each.subject, subject));
    if (there.length >= (this.options.maxStuck ?? DEFAULT_MAX_STUCK)) return stuckAtOf(there);
    if (stuck.length >= (this.options.maxStuckInAll ?? MAX_STUCK_IN_ALL)) return stuckAtOf(stuck);
    return undefined;
  }

  /** Gives waiting requests to idle children, starting children up to MAX_WORKING. */
  private dispatch(): void {
    for (let job = this.queue[0]; job; job = this.queue[0]) {
      // Children may have got stuck there since it was queued.
      const stuckAt = this.blockedAt(job.subject);
      if (stuckAt) {
        this.queue.shift();
        settle(job, (what) => new InspectionUnavailable(what, stuckAt));
        continue;
      }
      let worker = this.workers.find((each) => each.job === undefined);
      if (!worker) {
        if (this.workers.length >= MAX_WORKING) return;
        try {
          worker = this.spawn();
        } catch (error) {
          this.queue.shift();
          const why = (error as Error).message;
          settle(
            job,
            (what) => new InspectionError(`${what}: cannot start a child process: ${why}`),
          );
          continue;
        }
      }
      this.queue.shift();
      this.start(worker, job);
    }
  }

  private start(worker: Worker, job: Job): void {
    clearTimeout(worker.idle);
    const id = this.nextId++;
    worker.job = job;
    worker.jobId = id;
    this.arm(worker);
    try {
      worker.proc.stdin.write(`${JSON.stringify({ id, op: job.op, args: job.args })}\n`);
      // A child that died meanwhile fails the request when its exit is seen.
      Promise.resolve(worker.proc.stdin.flush()).catch(() => {});
    } catch (error) {
      const why = (error as Error).message;
      this.fail(worker, (what) => new InspectionError(`${what}: cannot reach the child: ${why}`));
    }
  }

  private spawn(): Worker {
    const proc = Bun.spawn(this.options.command, {
      stdin: "pipe",
      stdout: "pipe",
      stderr: "pipe",
      // Nothing of the driver's environment is needed there.
      env: { PATH: process.env.PATH ?? "/usr/bin:/bin" },
    });
    const worker: Worker = { proc, ready: false, stderr: "" };
    this.workers.push(worker);
    void this.readLines(worker);
    void (async () => {
      const decoder = new TextDecoder();
      for await (const chunk of proc.stderr) {
        worker.stderr = (worker.stderr + decoder.decode(chunk)).slice(-STDERR_TAIL);
      }
    })();
    void proc.exited.then((code) => {
      if (!this.forget(worker)) return;
      clearTimeout(worker.watchdog);
      clearTimeout(worker.idle);
      const { job, stderr } = worker;
      if (job) {
        settle(
          job,
          (what) =>
            new InspectionError(
              `${what}: the inspecting process exited (${code ?? "killed"})${stderr ? `: ${stderr.trim()}` : ""}`,
            ),
        );
      }
      this.dispatch();
    });
    return worker;
  }

  private async readLines(worker: Worker): Promise<void> {
    const decoder = new TextDecoder();
    let buffered = "";
    for await (const chunk of worker.proc.stdout) {
      buffered += decoder.decode(chunk, { stream: true });
      for (let end = buffered.indexOf("\n"); end !== -1; end = buffered.indexOf("\n")) {
        const line = buffered.slice(0, end);
        buffered = buffered.slice(end + 1);
        this.answer(worker, line);
      }
      if (buffered.length > MAX_LINE) {
        this.fail(
          worker,
          (what) => new InspectionError(`${what}: an answer beyond ${MAX_LINE} bytes`),
        );
        return;
      }
    }
  }

  private answer(worker: Worker, line: string): void {
    if (!this.workers.includes(worker)) return;
    let message: Answer;
    try {
      message = JSON.parse(line) as Answer;
    } catch {
      this.fail(worker, (what) => new InspectionError(`${what}: an answer that is not JSON`));
      return;
    }
    // Any line is a sign of life.
    worker.ready = true;
    this.arm(worker);
    if ("progress" in message || message.id !== worker.jobId) return;
    const { job } = worker;
    worker.job = undefined;
    worker.jobId = undefined;
    clearTimeout(worker.watchdog);
    worker.idle = setTimeout(() => this.retire(worker), this.options.idleMs ?? IDLE_EXIT_MS);
    worker.idle.unref();
    if (job) {
      if (message.ok) for (const waiter of job.waiters) waiter.resolve(message.value);
      else settle(job, (what) => new InspectionError(`${what}: ${message.error}`, message.code));
    }
    this.dispatch();
  }

  private arm(worker: Worker): void {
    clearTimeout(worker.watchdog);
    if (!worker.job) return;
    const delay = this.timeoutMs + (worker.ready ? 0 : START_MS);
    worker.watchdog = setTimeout(() => this.expire(worker), delay);
  }

  /** Idle for IDLE_EXIT_MS: its stdin is closed, and it ends. */
  private retire(worker: Worker): void {
    if (worker.job || !this.forget(worker)) return;
    try {
      Promise.resolve(worker.proc.stdin.end()).catch(() => {});
    } catch {
      // Gone already.
    }
  }

  /** Silent for the timeout with a request running: stuck. */
  private expire(worker: Worker): void {
    const { job, proc } = worker;
    if (!job || !this.forget(worker)) return;
    const stuckAt = openFiles(proc.pid);
    this.stop(worker);
    const entry: Stuck = { proc, subject: [...job.subject, ...stuckAt], stuckAt };
    this.stuck.add(entry);
    // Forgotten once it ends: nothing it held is barred any longer.
    void proc.exited.then(() => this.stuck.delete(entry));
    const timeouts: InspectionTimeout[] = [];
    settle(job, (what) => {
      const timeout = new InspectionTimeout(what, this.timeoutMs, stuckAt);
      timeouts.push(timeout);
      return timeout;
    });
    for (const timeout of timeouts) this.options.onTimeout?.(timeout);
    this.dispatch();
  }

  /** Kills the child and fails its request; the next request gets another. */
  private fail(worker: Worker, error: (what: string) => Error): void {
    if (!this.forget(worker)) return;
    this.stop(worker);
    if (worker.job) settle(worker.job, error);
    this.dispatch();
  }

  /** Takes the child out of the pool; false if it was not in it any more. */
  private forget(worker: Worker): boolean {
    const index = this.workers.indexOf(worker);
    if (index === -1) return false;
    this.workers.splice(index, 1);
    return true;
  }

  private stop(worker: Worker): void {
    clearTimeout(worker.watchdog);
    clearTimeout(worker.idle);
    worker.proc.kill("SIGKILL");
  }
}

function settle(job: Job, error: (what: string) => Error): void {
  for (const waiter of job.waiters) waiter.reject(error(waiter.what));
}

const quoted = (paths: string[]) => paths.map((path) => JSON.stringify(path)).join(", ");

function stuckAtOf(stuck: Stuck[]): string[] {
  return [...new Set(stuck.flatMap((each) => each.stuckAt))];
}

// A descriptor's path, as a handle's sharedPath is: /proc/<pid>/fd/<n>, and what follows.
const DESCRIPTOR = /^\/proc\/(?:self|\d+)\/fd\/\d+/;

/**
 * The paths a request is about: every absolute path among its arguments, a descriptor's path read
 * as the file it leads to (procfs answers that from the kernel's own records, asking no file
 * system).
 */
function subjectOf(args: unknown): string[] {
  const paths = new Set<string>();
  const visit = (value: unknown, depth: number) => {
    if (typeof value === "string") {
      if (value.startsWith("/")) paths.add(located(value));
    } else if (typeof value === "object" && value !== null && depth < 3) {
      for (const each of Object.values(value)) visit(each, depth + 1);
    }
  };
  visit(args, 0);
  return [...paths];
}

function located(path: string): string {
  const match = DESCRIPTOR.exec(path);
  if (!match) return normalize(path);
  try {
    const target = readlinkSync(match[0]).replace(/ \(deleted\)$/, "");
    return normalize(`${target}${path.slice(match[0].length)}`);
  } catch {
    return path;
  }
}

/** Whether a path of `a` is one of `b`, inside one, or holds one. */
function overlaps(a: string[], b: string[]): boolean {
  return a.some((x) => b.some((y) => inside(x, y) || inside(y, x)));
}

function inside(path: string, dir: string): boolean {
  return path === dir || path.startsWith(dir.endsWith("/") ? dir : `${dir}/`);
}

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

/** A process's state and where it waits in the kernel, from /proc. */
function processState(pid: number): string {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "latin1");
    const state = stat.slice(stat.lastIndexOf(")") + 2).split(" ")[0] ?? "?";
    let wchan = "";
    try {
      wchan = readFileSync(`/proc/${pid}/wchan`, "latin1").trim();
    } catch {
      // Not readable here.
    }
    return wchan && wchan !== "0" ? `${state} ${wchan}` : state;
  } catch {
    return "gone";
  }
}
