/** A directory held open by descriptor, and the path it was opened at (for messages only). */
export interface HeldDirectory {
  fd: number;
  path: string;
}

/** The two OS operations the driver performs. Tests of the CSI rules may pass a fake. */
export interface Mounter {
  /**
   * Bind-mounts the directory `source` at the directory `target`, like `mount --bind`; with
   * `recursive`, together with every mount below it, like `mount --rbind`.
   */
  bindMount(source: HeldDirectory, target: HeldDirectory, recursive?: boolean): Promise<void>;
  /**
   * Makes the mount whose root `target` is held open, and every mount below it, a slave of the
   * peer group it was copied from, and the top one shared again in a group of its own, like
   * `mount --make-rslave --make-shared`.
   */
  makeSlave(target: HeldDirectory): Promise<void>;
  /**
   * Removes the topmost mount on the directory `target` holds, like `umount -l`: detached at
   * once, even though the driver's own descriptor keeps it busy.
   */
  unmount(target: HeldDirectory): Promise<void>;
}

/** `mount` or `umount` failed: exited non-zero, was killed, or ran past its time. */
export class MountCommandError extends Error {
  override name = "MountCommandError";

  constructor(
    readonly argv: readonly string[],
    readonly exitCode: number | null,
    readonly stderr: string,
    readonly timedOut: boolean,
  ) {
    const how = timedOut
      ? "did not finish in time and was killed"
      : exitCode === null
        ? "was killed by a signal"
        : `exited with status ${exitCode}`;
    super(`${argv.join(" ")} ${how}${stderr ? `: ${stderr}` : ""}`);
  }
}

// Enough for any message mount or umount prints; a flood beyond it is cut.
const MAX_STDERR_CHARS = 2000;
// After the command has exited, how long to wait for the rest of its stderr (a grandchild
// that kept the pipe open must not hold the call).
const STDERR_DRAIN_MS = 100;
// The child's descriptors 3 and 4 are the directories it is given.
const FIRST_PASSED_FD = 3;

/**
 * Runs the util-linux `mount` and `umount` programs, each bounded in time.
 *
 * They never see a path that could be resolved differently from what the driver checked: each
 * directory is passed as an open descriptor and named `/proc/self/fd/N`, and
 * `--no-canonicalize` keeps them from resolving it into a path and looking that up again.
 */
export class CommandMounter implements Mounter {
  constructor(
    private readonly mountPath: string,
    private readonly umountPath: string,
    private readonly timeoutMs: number,
  ) {}

  bindMount(source: HeldDirectory, target: HeldDirectory, recursive = false): Promise<void> {
    const bind = recursive ? "--rbind" : "--bind";
    return this.run(
      [this.mountPath, "--no-canonicalize", bind],
      [source, target],
      [this.mountPath, bind, source.path, target.path],
    );
  }

  makeSlave(target: HeldDirectory): Promise<void> {
    // One `mount` run: util-linux applies the two changes in this order.
    return this.run(
      [this.mountPath, "--no-canonicalize", "--make-rslave", "--make-shared"],
      [target],
      [this.mountPath, "--make-rslave", "--make-shared", target.path],
    );
  }

  unmount(target: HeldDirectory): Promise<void> {
    // Lazily (MNT_DETACH): the descriptor that names the mount also keeps it busy.
    return this.run(
      [this.umountPath, "--no-canonicalize", "--lazy"],
      [target],
      [this.umountPath, "--lazy", target.path],
    );
  }

  private async run(
    command: string[],
    directories: HeldDirectory[],
    shown: string[],
  ): Promise<void> {
    const argv = [
      ...command,
      ...directories.map((_, index) => `/proc/self/fd/${FIRST_PASSED_FD + index}`),
    ];
    const child = Bun.spawn(argv, {
      stdio: ["ignore", "ignore", "pipe", ...directories.map((directory) => directory.fd)],
      // Messages in a stable language, whatever the node's locale.
      env: { PATH: process.env.PATH ?? "/usr/sbin:/usr/bin:/sbin:/bin", LC_ALL: "C" },
      // A process group of its own: a timeout kills whatever the command started too.
      detached: true,
    });
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      killGroup(child.pid);
    }, this.timeoutMs);
    const exitCode = await child.exited;
    clearTimeout(timer);
    // Whatever the command started and left behind goes with it. While a member lives, the
    // group's id is the child's pid and cannot be taken; once none does, the signal finds no
    // one (ESRCH) unless a new process took that pid and made itself a group leader meanwhile.
    killGroup(child.pid);
    if (exitCode === 0 && !timedOut) {
      // stderr is read only when the command failed: a successful call skips the read.
      void child.stderr.cancel().catch(() => {});
      return;
    }
    const message = await readBounded(child.stderr, STDERR_DRAIN_MS, MAX_STDERR_CHARS);
    throw new MountCommandError(
      shown,
      child.signalCode === null ? exitCode : null,
      message.trim(),
      timedOut,
    );
  }
}

/**
 * What a stream holds within `waitMs`, at most `maxChars` of it; the stream is closed after,
 * so that a pipe a stray process kept open does not stay open in the driver.
 */
async function readBounded(
  stream: ReadableStream<Uint8Array>,
  waitMs: number,
  maxChars: number,
): Promise<string> {
  const reader = stream.getReader();
  const decoder = new TextDecoder();
  let text = "";
  const expired = Bun.sleep(waitMs).then(() => "expired" as const);
  try {
    while (text.length < maxChars) {
      const chunk = await Promise.race([reader.read(), expired]);
      if (chunk === "expired" || chunk.done) break;
      text += decoder.decode(chunk.value, { stream: true });
    }
  } finally {
    void reader.cancel().catch(() => {});
  }
  return text.slice(0, maxChars);
}

function killGroup(pid: number): void {
  try {
    process.kill(-pid, "SIGKILL");
  } catch {
    // The group is gone already.
  }
}
