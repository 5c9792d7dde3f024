import { closeSync, constants, fstatSync, openSync, readlinkSync, type Stats } from "node:fs";
import { open, readFile } from "node:fs/promises";
import { join } from "node:path";
import { type FdMount, fdMount, gate, UntrustedMountError } from "./gate.ts";
import { openAt } from "./openat.ts";

/**
 * Directories held open by descriptor, so that what was checked is what gets used.
 *
 * A path is resolved again by every system call and every program that is given it: between a
 * check and the `mount`, `umount` or `rmdir` that follows, a directory on the path can be swapped
 * for a symbolic link. A descriptor names one directory for as long as it is open. The driver
 * opens each directory below the kubelet root without following links, one name at a time,
 * checks the directory it got, and from then on works through the descriptor:
 * `/proc/self/fd/N` (a child process gets the descriptor itself) resolves to exactly that
 * directory, and `/proc/self/fd/N/name` to the entry `name` inside it, with only that last name
 * looked up again.
 */

// Linux's O_PATH: a handle that names a file without opening it for reading (node:fs does not
// export it). Such a handle cannot be read from, but it can be stat'ed, passed to a child, and
// resolved through /proc/self/fd.
export const O_PATH = 0o10000000;
// No O_CLOEXEC: Bun.spawn closes every descriptor it is not asked to pass, and a handle passed
// to a child must arrive open even when its number is the one it gets there.
const DIRECTORY_HANDLE = O_PATH | constants.O_DIRECTORY;

/** An open handle on a directory, with what it was when opened. Closed by `using` or close(). */
export class DirectoryHandle implements Disposable {
  readonly dev: number;
  readonly ino: number;
  /** Zero when the directory has been removed (a mount can still hold it). */
  readonly nlink: number;
  /**
   * The kernel's id of the mount the directory is on, as the mount table gives it (./gate.ts,
   * FdMount.mountId): the same kind of id as every other mountId the driver compares.
   */
  readonly mountId: number;
  private open = true;

  /**
   * Holds `fd`. `mount`, the mount it is on (./gate.ts, fdMount), is told when not given; `stat` is taken when
   * not given: a caller that has not judged the directory's mount (./gate.ts) must know it is
   * one the driver may stat.
   */
  constructor(
    readonly fd: number,
    mount?: FdMount,
    stat: Pick<Stats, "dev" | "ino" | "nlink"> = fstatSync(fd),
  ) {
    this.dev = stat.dev;
    this.ino = stat.ino;
    this.nlink = stat.nlink;
    this.mountId = (mount ?? fdMount(fd)).mountId;
  }

  /** A path that resolves to this very directory, for this process. */
  get path(): string {
    return `/proc/self/fd/${this.fd}`;
  }

  /**
   * A path that resolves to this very directory for another process of this node's, such as the
   * inspector's child (./inspector.ts), for as long as the handle is open.
   */
  get sharedPath(): string {
    return `/proc/${process.pid}/fd/${this.fd}`;
  }

  /** A path to the entry `name` of this directory: only `name` is looked up. */
  entry(name: string): string {
    return `${this.path}/${name}`;
  }

  /** Where the directory is now, as the kernel names it (ends in " (deleted)" once removed). */
  location(): string {
    return readlinkSync(this.path);
  }

  close(): void {
    if (!this.open) return;
    this.open = false;
    closeSync(this.fd);
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

/** Opens a directory the operator named, following symbolic links as the kubelet does. */
export function openDirectory(path: string): DirectoryHandle {
  return handle(openSync(path, DIRECTORY_HANDLE));
}

const MOUNT_FIX =
  "unmount what was mounted there; the driver looks only into local file systems and its own binds of the Workload API directory";

/**
 * Opens the directory `name` inside `parent` without following a symbolic link at `name`:
 * a link fails with ELOOP or ENOTDIR, anything but a directory with ENOTDIR. Should it be the
 * root of a mount (a volume's target), its mount is judged before it is stat'ed (./gate.ts):
 * one whose file system is not local is UntrustedMountError.
 */
export function openEntry(parent: DirectoryHandle, name: string): DirectoryHandle {
  const fd = openAt(parent.fd, name, DIRECTORY_HANDLE | constants.O_NOFOLLOW);
  try {
    const mount = fdMount(fd);
    if (mount.mountId !== parent.mountId) {
      try {
        gate.judge(mount, { at: name, fix: MOUNT_FIX, open: true });
      } catch (error) {
        if (!(error instanceof UntrustedMountError)) throw error;
        throw new UntrustedMountError(join(parent.location(), name), error.mount, error.fix);
      }
    }
    return new DirectoryHandle(fd, mount);
  } catch (error) {
    closeSync(fd);
    throw error;
  }
}

function handle(fd: number): DirectoryHandle {
  try {
    return new DirectoryHandle(fd);
  } catch (error) {
    closeSync(fd);
    throw error;
  }
}

/** The kernel's id of the mount an open file is on, as the mount table gives it. */
export function readMountId(fd: number): number {
  // No file system server is asked (./gate.ts).
  return fdMount(fd).mountId;
}

/** What a directory is, read through a descriptor open while it is looked at. */
export interface DirectoryView {
  dev: number;
  ino: number;
  /** Zero when the directory has been removed (a mount can still hold it). */
  nlink: number;
  mountId: number;
  /** A path that resolves to this very directory while `use` runs. */
  path: string;
}

/**
 * Opens a directory off the event loop (Bun runs node:fs/promises on its thread pool), so that a
 * slow or hung file system holds up nothing but this call, and lets `use` look at it. A symbolic
 * link at the path's last name is followed only when `follow` is set.
 */
export async function viewDirectory<T>(
  path: string,
  follow: boolean,
  use: (view: DirectoryView) => Promise<T>,
): Promise<T> {
  const file = await open(path, DIRECTORY_HANDLE | (follow ? 0 : constants.O_NOFOLLOW));
  try {
    const stat = await file.stat();
    const info = await readFile(`/proc/self/fdinfo/${file.fd}`, "latin1");
    return await use({
      dev: stat.dev,
      ino: stat.ino,
      nlink: stat.nlink,
      mountId: mountIdIn(info, file.fd),
      path: `/proc/self/fd/${file.fd}`,
    });
  } finally {
    await file.close();
  }
}

function mountIdIn(info: string, fd: number): number {
  const match = /^mnt_id:\s*(\d+)$/m.exec(info);
  if (!match?.[1]) {
    throw new Error(`no mnt_id in /proc/self/fdinfo/${fd} (is /proc mounted?)`);
  }
  return Number(match[1]);
}
