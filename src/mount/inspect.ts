import {
  closeSync,
  constants,
  fstatSync,
  lstatSync,
  openSync,
  readFileSync,
  statSync,
} from "node:fs";
import { dirname } from "node:path";

/**
 * What is at a target path, found without reading the mount table.
 *
 * The node's mount table can hold tens of thousands of entries; reading it on every call makes
 * latency grow with the node's mount count. Instead, each question is answered from the path
 * itself in a fixed number of system calls:
 *
 * - "Is it a mount point?" The kernel's mount id of the directory (`mnt_id` in
 *   /proc/self/fdinfo of an open descriptor) differs from its parent's exactly when the
 *   directory is the root of a mount. Comparing device numbers instead would miss a bind mount
 *   from the same file system, which is the common case here.
 * - "Does it show the Workload API directory?" A bind mount's root is the source directory's
 *   own inode, so the target reports the source's (device, inode) pair, even when both live on
 *   one file system. If the source was removed and re-created after the mount, the mount still
 *   holds the old, now unlinked, inode: the pair no longer matches, and the old inode has a
 *   link count of zero.
 */
export type TargetState =
  | { kind: "missing" }
  | { kind: "symlink" }
  | { kind: "not-directory" }
  | DirectoryState;

export interface DirectoryState extends Inode {
  kind: "directory";
  /** The kernel's id of the mount the directory is on. */
  mountId: number;
  /** The root of a mount (its mount id differs from its parent's). */
  mountPoint: boolean;
}

export interface Inode {
  dev: number;
  ino: number;
  /** Zero when the directory has been removed (a mount can still hold it). */
  nlink: number;
}

const OPEN_DIRECTORY = constants.O_RDONLY | constants.O_DIRECTORY;

export function inspectTarget(path: string): TargetState {
  let fd: number;
  try {
    // O_NOFOLLOW: a symbolic link at the target is reported, never followed.
    fd = openSync(path, OPEN_DIRECTORY | constants.O_NOFOLLOW);
  } catch (error) {
    return classifyOpenError(path, error);
  }
  try {
    const stat = fstatSync(fd);
    const mountId = readMountId(fd);
    return {
      kind: "directory",
      dev: stat.dev,
      ino: stat.ino,
      nlink: stat.nlink,
      mountId,
      mountPoint: mountId !== mountIdOf(dirname(path)),
    };
  } finally {
    closeSync(fd);
  }
}

/** Device, inode and link count of a directory, following symbolic links; undefined when missing. */
export function directoryInode(path: string): Inode | undefined {
  try {
    const stat = statSync(path);
    return stat.isDirectory() ? { dev: stat.dev, ino: stat.ino, nlink: stat.nlink } : undefined;
  } catch (error) {
    if (isErrno(error, "ENOENT") || isErrno(error, "ENOTDIR")) return undefined;
    throw error;
  }
}

export function sameInode(a: Omit<Inode, "nlink">, b: Omit<Inode, "nlink">): boolean {
  return a.dev === b.dev && a.ino === b.ino;
}

export function isErrno(error: unknown, code: string): boolean {
  return (error as NodeJS.ErrnoException | undefined)?.code === code;
}

function mountIdOf(path: string): number {
  const fd = openSync(path, OPEN_DIRECTORY);
  try {
    return readMountId(fd);
  } finally {
    closeSync(fd);
  }
}

/** The kernel's id of the mount an open file is on, from /proc/self/fdinfo. */
export function readMountId(fd: number): number {
  const info = readFileSync(`/proc/self/fdinfo/${fd}`, "latin1");
  const match = /^mnt_id:\s*(\d+)$/m.exec(info);
  if (!match?.[1]) {
    throw new Error(`no mnt_id in /proc/self/fdinfo/${fd} (is /proc mounted?)`);
  }
  return Number(match[1]);
}

function classifyOpenError(path: string, error: unknown): TargetState {
  if (isErrno(error, "ENOENT")) return { kind: "missing" };
  // O_NOFOLLOW|O_DIRECTORY fails with ELOOP or ENOTDIR on a symbolic link, and with ENOTDIR
  // on any other non-directory: lstat tells them apart.
  if (isErrno(error, "ELOOP") || isErrno(error, "ENOTDIR")) {
    try {
      return lstatSync(path).isSymbolicLink() ? { kind: "symlink" } : { kind: "not-directory" };
    } catch (lstatError) {
      if (isErrno(lstatError, "ENOENT")) return { kind: "missing" };
      throw lstatError;
    }
  }
  throw error;
}
