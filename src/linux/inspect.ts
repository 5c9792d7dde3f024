import { closeSync, constants, fstatSync, openSync, statSync } from "node:fs";
import { type DirectoryHandle, O_PATH, openEntry } from "./descriptors.ts";
import { isErrno } from "./errno.ts";
import { fdMount } from "./gate.ts";

/**
 * What is at a target, found without reading the mount table.
 *
 * The node's mount table can hold tens of thousands of entries; reading it on every call makes
 * latency grow with the node's mount count. Instead, each question is answered from the
 * directory itself in a fixed number of system calls:
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

/**
 * A directory held open (DirectoryHandle, ./descriptors.ts, is the one the driver opens): what
 * the CSI rules look at and hand to the mounter.
 */
export type Directory = Pick<
  DirectoryHandle,
  "fd" | "dev" | "ino" | "nlink" | "mountId" | "path" | "sharedPath" | "location" | "close"
> &
  Disposable;

/** What is at a target; a directory there is held open until the state is disposed of. */
export type TargetState = Disposable &
  (
    | { kind: "missing" | "symlink" | "not-directory" }
    | {
        kind: "directory";
        /** The directory, held open. */
        dir: Directory;
        /** The root of a mount (its mount id differs from its parent's). */
        mountPoint: boolean;
      }
  );

/** What is at a target when it is a directory. */
export type TargetDirectory = Extract<TargetState, { kind: "directory" }>;

export interface Inode {
  dev: number;
  ino: number;
  /** Zero when the directory has been removed (a mount can still hold it). */
  nlink: number;
}

/** A target state with nothing held open. */
export function nothingAt(kind: "missing" | "symlink" | "not-directory"): TargetState {
  return { kind, [Symbol.dispose]() {} };
}

/** A directory at a target, held open until disposed of. */
export function directoryAt(dir: Directory, mountPoint: boolean): TargetDirectory {
  return { kind: "directory", dir, mountPoint, [Symbol.dispose]: () => dir.close() };
}

/** What is at the entry `name` of `parent`; a symbolic link there is reported, never followed. */
export function inspectEntry(parent: DirectoryHandle, name: string): TargetState {
  let handle: DirectoryHandle;
  try {
    handle = openEntry(parent, name);
  } catch (error) {
    return nothingAt(classifyOpenError(parent.entry(name), error, parent.mountId));
  }
  return directoryAt(handle, handle.mountId !== parent.mountId);
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

/**
 * `path` ends in the name that failed to open in a directory on the mount `parentMountId`; only
 * that name is looked at again. A file mounted there (a mount's root that is not a directory) is
 * told without a look into its file system, which could stop answering.
 */
export function classifyOpenError(
  path: string,
  error: unknown,
  parentMountId: number,
): "missing" | "symlink" | "not-directory" {
  if (isErrno(error, "ENOENT")) return "missing";
  // O_NOFOLLOW|O_DIRECTORY fails with ELOOP or ENOTDIR on a symbolic link, and with ENOTDIR
  // on any other non-directory: the entry itself, held without following it, tells them apart.
  if (!isErrno(error, "ELOOP") && !isErrno(error, "ENOTDIR")) throw error;
  let fd: number;
  try {
    fd = openSync(path, O_PATH | constants.O_NOFOLLOW);
  } catch (openError) {
    if (isErrno(openError, "ENOENT")) return "missing";
    throw openError;
  }
  try {
    if (fdMount(fd).mountId !== parentMountId) return "not-directory";
    return fstatSync(fd).isSymbolicLink() ? "symlink" : "not-directory";
  } finally {
    closeSync(fd);
  }
}
