import {
  closeSync,
  constants,
  fstatSync,
  openSync,
  readlinkSync,
  readSync,
  statfsSync,
} from "node:fs";
import type { Subprocess } from "bun";
import { O_PATH } from "./descriptors.ts";

/** A directory held open by descriptor, and the path it was opened at (for messages only). */
export interface HeldDirectory {
  fd: number;
  path: string;
}

/** The root of a mount to remove, held open by the caller. */
export interface MountRoot extends HeldDirectory {
  /**
   * Closes the caller's descriptor (the caller may close it again later). Given, the mounter
   * calls it before `umount` runs when it can remove the mount through the directory below it:
   * a descriptor on the mount would keep the mount busy.
   */
  close?(): void;
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
   * Removes the topmost mount on the directory `target` holds. A mount in use (a descriptor on
   * it, a process working in it) is detached at once, like `umount -l`, and goes once the last
   * user lets go.
   */
  unmount(target: MountRoot): Promise<void>;
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
// Where the commands' stderr files are made, the first that takes one: files of no name
// (O_TMPFILE), gone with their last descriptor. Neither there: a pipe (below).
const STDERR_DIRECTORIES = ["/dev/shm", "/tmp"];
// Linux's O_TMPFILE (with O_DIRECTORY, as the kernel wants it); node:fs does not export it.
const O_TMPFILE = 0o20000000 | constants.O_DIRECTORY;
// Empty stderr files kept for the next commands: one per command running at once, up to this.
const MAX_SPARE_STDERR_FILES = 32;
// After the command has exited, how long to wait for the rest of its stderr (a grandchild
// that kept the pipe open must not hold the call).
const STDERR_DRAIN_MS = 100;
// The child's descriptors 3 and 4 are the directories it is given.
const FIRST_PASSED_FD = 3;
// File systems (statfs magic) that every util-linux `umount` names from statfs alone: ext2, 3
// and 4, xfs, btrfs, tmpfs. On another type (overlay, zfs, ...) it would look the target up in
// the mount table by its resolved path, so the driver does not take that way there.
const STATFS_NAMED_FILE_SYSTEMS = new Set([0xef53, 0x58465342, 0x9123683e, 0x01021994]);
// Directories below the driver's own binds kept open, one descriptor each: more than a node
// has volumes. Past it, the oldest is dropped (its volume is then unmounted lazily).
const MAX_COVERED_DIRECTORIES = 4096;
// libmount's record of mount options (utab), pointed at an empty file for `umount` of a bind
// of the driver's: it holds nothing for them, and an entry for the target's path would make
// umount look the target up by path.
const EMPTY_UTAB = "/dev/null";

/** The directory below one of the driver's binds, held open to unmount the bind through it. */
class CoveredDirectory {
  readonly fd: number;
  private open = true;

  /** Opens the directory `path` resolves to; nothing more is read of it than its location. */
  constructor(path: string) {
    // No O_CLOEXEC, as for every directory handle: it is passed to `umount` as descriptor 3.
    this.fd = openSync(path, O_PATH | constants.O_DIRECTORY);
  }

  /** Where the directory is now, as the kernel names it (ends in " (deleted)" once removed). */
  location(): string {
    return readlinkSync(descriptorPath(this.fd));
  }

  close(): void {
    if (!this.open) return;
    this.open = false;
    closeSync(this.fd);
  }
}

/**
 * The commands' stderr: a file of no name, read when the command failed. A pipe would cost the
 * driver a socket pair, its registrations with the event loop and a wake-up at its end for every
 * command, about 50 µs of CPU per spawn, which is a few per cent of what a publish costs the
 * driver's one thread at c=16 (docs/benchmarks.md). A file comes back to the pool only empty,
 * so that each command's message is its own; any other is closed.
 */
class StderrFiles {
  private readonly spare: number[] = [];
  /** Where files are made; null once no directory would take one (pipes then). */
  private directory: string | null | undefined;

  constructor(private readonly directories: readonly string[]) {}

  /** A file for one command's stderr, or undefined to use a pipe. */
  take(): number | undefined {
    const spare = this.spare.pop();
    if (spare !== undefined) return spare;
    if (this.directory === null) return undefined;
    for (const directory of this.directory ? [this.directory] : this.directories) {
      try {
        const fd = openSync(directory, O_TMPFILE | constants.O_RDWR | constants.O_APPEND, 0o600);
        this.directory = directory;
        return fd;
      } catch {
        // Not there, read-only, or a file system without O_TMPFILE: the next one.
      }
    }
    this.directory = null;
    return undefined;
  }

  /** What the command wrote, at most `maxChars`; the file is closed. */
  read(fd: number, maxChars: number): string {
    try {
      // UTF-8 takes at most 4 bytes a character.
      const buffer = Buffer.alloc(maxChars * 4);
      const length = readSync(fd, buffer, 0, buffer.length, 0);
      return buffer.toString("utf8", 0, length).slice(0, maxChars);
    } finally {
      closeSync(fd);
    }
  }

  /** Gives a file back after a command that succeeded: kept if nothing was written to it. */
  give(fd: number): void {
    if (this.spare.length < MAX_SPARE_STDERR_FILES && fstatSync(fd).size === 0) {
      this.spare.push(fd);
    } else {
      closeSync(fd);
    }
  }
}

/**
 * Runs the util-linux `mount` and `umount` programs, each bounded in time.
 *
 * They never see a path that could be resolved differently from what the driver checked: each
 * directory is passed as an open descriptor and named `/proc/self/fd/N`, and
 * `--no-canonicalize` keeps them from resolving it into a path and looking that up again.
 *
 * Unmounting through a descriptor on the mount itself needs `umount --lazy` (the descriptor
 * keeps the mount busy), and libmount reads and parses the whole mount table for every lazy
 * umount, so it would cost time in proportion to the node's mounts. For each plain bind it
 * makes, the mounter therefore keeps the directory the bind covers open, and removes the mount
 * through that: `umount /proc/self/fd/N` of a covered directory unmounts the topmost mount on
 * it (the kernel looks down through the mounts on a umount target), nothing holds the mount,
 * and libmount takes its fast way (statfs, no mount table, the descriptor's path passed to
 * umount(2) as given). See docs/benchmarks.md.
 */
export class CommandMounter implements Mounter {
  /** The directory each bind of this process covers, held open, by its location. */
  private readonly covered = new Map<string, CoveredDirectory>();

  /** The commands' environment, built once: a spawn copies each variable it is given. */
  private readonly env: Record<string, string>;
  /** The same, for a `umount` of one of the driver's own binds (see EMPTY_UTAB). */
  private readonly ownBindEnv: Record<string, string>;
  private readonly stderrFiles: StderrFiles;

  constructor(
    private readonly mountPath: string,
    private readonly umountPath: string,
    private readonly timeoutMs: number,
    private readonly maxCovered = MAX_COVERED_DIRECTORIES,
    stderrDirectories: readonly string[] = STDERR_DIRECTORIES,
  ) {
    this.stderrFiles = new StderrFiles(stderrDirectories);
    // Messages in a stable language, whatever the node's locale.
    this.env = { PATH: process.env.PATH ?? "/usr/sbin:/usr/bin:/sbin:/bin", LC_ALL: "C" };
    this.ownBindEnv = { ...this.env, LIBMOUNT_UTAB: EMPTY_UTAB };
  }

  async bindMount(source: HeldDirectory, target: HeldDirectory, recursive = false): Promise<void> {
    const bind = recursive ? "--rbind" : "--bind";
    // A recursive bind has mounts below it, which keep it busy: it is always unmounted lazily.
    const location = recursive ? undefined : coverableLocation(target.fd);
    await this.run(
      [this.mountPath, "--no-canonicalize", bind],
      [source, target],
      [this.mountPath, bind, source.path, target.path],
    );
    if (location !== undefined) this.cover(target.fd, location);
  }

  makeSlave(target: HeldDirectory): Promise<void> {
    // One `mount` run: util-linux applies the two changes in this order.
    return this.run(
      [this.mountPath, "--no-canonicalize", "--make-rslave", "--make-shared"],
      [target],
      [this.mountPath, "--make-rslave", "--make-shared", target.path],
    );
  }

  async unmount(target: MountRoot): Promise<void> {
    const below = this.takeCovered(target.fd);
    if (!below || !target.close) {
      below?.close();
      // Lazily (MNT_DETACH): the descriptor that names the mount also keeps it busy.
      await this.run(
        [this.umountPath, "--no-canonicalize", "--lazy"],
        [target],
        [this.umountPath, "--lazy", target.path],
      );
      return;
    }
    const deadline = performance.now() + this.timeoutMs;
    try {
      target.close();
      const held = { fd: below.fd, path: target.path };
      try {
        // --internal-only: no umount.<type> helper chosen by the covered file system's type;
        // --no-mtab: no table to update, in builds that still keep /etc/mtab.
        await this.run(
          [this.umountPath, "--internal-only", "--no-mtab"],
          [held],
          [this.umountPath, target.path],
          this.ownBindEnv,
        );
        return;
      } catch (error) {
        if (!(error instanceof MountCommandError) || error.timedOut) throw error;
      }
      // In use (a process has a file open in it): detached now, as through the mount's root.
      await this.run(
        [this.umountPath, "--no-canonicalize", "--lazy"],
        [held],
        [this.umountPath, "--lazy", target.path],
        this.env,
        Math.max(deadline - performance.now(), 0),
      );
    } finally {
      below.close();
    }
  }

  /** Keeps the directory the new bind at `location` covers, if it is still there. */
  private cover(fd: number, location: string): void {
    let below: CoveredDirectory;
    try {
      // Through the descriptor opened before the bind: it names the covered directory, and a
      // magic link's target is not looked through for mounts.
      below = new CoveredDirectory(descriptorPath(fd));
    } catch {
      return;
    }
    if (below.location() !== location) {
      // Moved while `mount` ran: the caller takes the mount back.
      below.close();
      return;
    }
    this.covered.get(location)?.close();
    this.covered.delete(location);
    if (this.covered.size >= this.maxCovered) this.dropStale();
    this.covered.set(location, below);
  }

  /** The covered directory below the mount whose root `fd` holds, taken out of the registry. */
  private takeCovered(fd: number): CoveredDirectory | undefined {
    let location: string;
    try {
      location = readlinkSync(descriptorPath(fd));
    } catch {
      return undefined;
    }
    const below = this.covered.get(location);
    if (!below) return undefined;
    this.covered.delete(location);
    // The covered directory is still the one at the mount's place, so the topmost mount on it
    // is the mount at that place: nothing was renamed or removed since the bind.
    if (below.location() === location) return below;
    below.close();
    return undefined;
  }

  /** Drops covered directories removed or moved since, then the oldest if none was. */
  private dropStale(): void {
    for (const [location, below] of this.covered) {
      if (below.location() === location) continue;
      below.close();
      this.covered.delete(location);
    }
    const oldest = this.covered.entries().next().value;
    if (oldest && this.covered.size >= this.maxCovered) {
      oldest[1].close();
      this.covered.delete(oldest[0]);
    }
  }

  private async run(
    command: string[],
    directories: HeldDirectory[],
    shown: string[],
    env = this.env,
    timeoutMs = this.timeoutMs,
  ): Promise<void> {
    const argv = [
      ...command,
      ...directories.map((_, index) => `/proc/self/fd/${FIRST_PASSED_FD + index}`),
    ];
    // stderr is kept because the command's message is part of the error a failure answers;
    // stdin and stdout are /dev/null. Measured against a bare spawn of the same `mount`, the
    // process group costs a few hundredths of a millisecond, and a small environment is what
    // keeps the spawn at that floor (docs/benchmarks.md).
    const stderrFile = this.stderrFiles.take();
    let child: Subprocess<"ignore", "ignore", "pipe" | number>;
    try {
      child = Bun.spawn(argv, {
        stdio: [
          "ignore",
          "ignore",
          stderrFile ?? "pipe",
          ...directories.map((directory) => directory.fd),
        ],
        env,
        // A process group of its own: a timeout kills whatever the command started too.
        detached: true,
      });
    } catch (error) {
      if (stderrFile !== undefined) closeSync(stderrFile);
      throw error;
    }
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      killGroup(child.pid);
    }, timeoutMs);
    const exitCode = await child.exited;
    clearTimeout(timer);
    // Whatever the command started and left behind goes with it. While a member lives, the
    // group's id is the child's pid and cannot be taken; once none does, the signal finds no
    // one (ESRCH) unless a new process took that pid and made itself a group leader meanwhile.
    killGroup(child.pid);
    const failed = exitCode !== 0 || timedOut;
    let message: string;
    if (stderrFile !== undefined) {
      // stderr is read only when the command failed: a successful call skips the read.
      if (!failed) {
        this.stderrFiles.give(stderrFile);
        return;
      }
      message = this.stderrFiles.read(stderrFile, MAX_STDERR_CHARS);
    } else {
      const stderr = child.stderr as ReadableStream<Uint8Array>;
      if (!failed) {
        void stderr.cancel().catch(() => {});
        return;
      }
      message = await readBounded(stderr, STDERR_DRAIN_MS, MAX_STDERR_CHARS);
    }
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

function descriptorPath(fd: number): string {
  return `/proc/self/fd/${fd}`;
}

/**
 * Where the directory `fd` holds is, when a plain bind there can later be removed through it:
 * on a file system `umount` names from statfs. Undefined otherwise.
 */
function coverableLocation(fd: number): string | undefined {
  try {
    if (!STATFS_NAMED_FILE_SYSTEMS.has(statfsSync(descriptorPath(fd)).type)) return undefined;
    return readlinkSync(descriptorPath(fd));
  } catch {
    return undefined;
  }
}
