/** The two OS operations the driver performs. Tests of the CSI rules may pass a fake. */
export interface Mounter {
  /** Bind-mounts the directory `source` at `target`, like `mount --bind source target`. */
  bindMount(source: string, target: string): Promise<void>;
  /** Removes the topmost mount at `target`, like `umount target`. */
  unmount(target: string): Promise<void>;
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

/** Runs the util-linux `mount` and `umount` programs, each bounded in time. */
export class CommandMounter implements Mounter {
  constructor(
    private readonly mountPath: string,
    private readonly umountPath: string,
    private readonly timeoutMs: number,
  ) {}

  bindMount(source: string, target: string): Promise<void> {
    return this.run([this.mountPath, "--bind", source, target]);
  }

  unmount(target: string): Promise<void> {
    return this.run([this.umountPath, target]);
  }

  private async run(argv: string[]): Promise<void> {
    const child = Bun.spawn(argv, {
      stdin: "ignore",
      stdout: "ignore",
      stderr: "pipe",
      // Messages in a stable language, whatever the node's locale.
      env: { PATH: process.env.PATH ?? "/usr/sbin:/usr/bin:/sbin:/bin", LC_ALL: "C" },
      timeout: this.timeoutMs,
      killSignal: "SIGKILL",
    });
    // stderr is read only when the command failed: its few lines fit in the pipe's buffer, and
    // a successful call (the common one) skips setting up the read.
    const exitCode = await child.exited;
    if (exitCode === 0) {
      return;
    }
    const stderr = new Response(child.stderr).text();
    const message = await Promise.race([stderr, Bun.sleep(STDERR_DRAIN_MS).then(() => "")]);
    throw new MountCommandError(
      argv,
      child.signalCode === null ? exitCode : null,
      message.trim().slice(0, MAX_STDERR_CHARS),
      child.killed && child.signalCode === "SIGKILL",
    );
  }
}
