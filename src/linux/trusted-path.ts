import { closeSync, constants, fstatSync, openSync, readlinkSync, type Stats } from "node:fs";
import { join } from "node:path";
import { DirectoryHandle, O_PATH } from "./descriptors.ts";
import { isErrno } from "./errno.ts";
import { type FdMount, fdMount, gate, UntrustedMountError } from "./gate.ts";
import { openAt } from "./openat.ts";

/**
 * A directory the operator named, opened the way the kubelet's paths are: one name at a time from
 * `/`, each directory held by descriptor while the next name is looked up in it, a symbolic link
 * refused (or, where the operator allows links, read and walked the same way), and every directory
 * a name is looked up in checked for who could change it.
 *
 * Whoever can write to a directory on the way can swap what the path leads to: replace the next
 * directory with a link to any host directory, which pods would then get (and which SELinux
 * labelling would relabel). So each directory looked in must belong to root (or the driver's own
 * user) and be writable by nobody else. A directory others may write to is safe only where it is
 * sticky (as /tmp is) and the entry the path takes in it belongs to root: there, nobody else may
 * rename or remove that entry, while an entry of another user's could have been put there by
 * anyone. The directory at the end belongs to whoever runs the agent, and is not judged.
 *
 * Nothing on the way is asked anything before its mount is judged (./gate.ts): a directory
 * that is the root of a mount whose file system could stop answering (FUSE, NFS, ...) is
 * refused as unsafe, without a stat or a lookup in it reaching that file system.
 */
export type TrustedDirectory =
  | { kind: "directory"; handle: DirectoryHandle }
  /** Nothing is at `at`. */
  | { kind: "missing"; at: string }
  /** Something that is not a directory is at `at`. */
  | { kind: "not-directory"; at: string }
  /**
   * The directory `at` on the way was removed, yet the path still leads to it: a mount holds it
   * (in a container: the hostPath mount of a directory since removed and re-created on the node).
   */
  | { kind: "removed"; at: string };

/** A path that someone other than root could redirect; `at` is where, `fix` what to change. */
export class UnsafePathError extends Error {
  override name = "UnsafePathError";

  constructor(
    readonly at: string,
    message: string,
    readonly fix: string,
  ) {
    super(message);
  }
}

export interface TrustedPathOptions {
  /** Follow symbolic links on the way; each directory a link leads through is checked the same. */
  followLinks: boolean;
  /** The driver's own uid, trusted like root. */
  uid?: number;
}

const STEP = O_PATH | constants.O_DIRECTORY | constants.O_NOFOLLOW;
const GROUP_OR_OTHER_WRITE = 0o022;
const STICKY = 0o1000;
// The kernel's own bound on the links one lookup follows.
const MAX_LINKS = 40;

/** Opens `path` (absolute) as described above; a path others could redirect is UnsafePathError. */
export function openTrustedDirectory(path: string, options: TrustedPathOptions): TrustedDirectory {
  const first = walk(path, options);
  // A directory removed between its lookup and its fstat is a race with its remover, not a
  // removed view: a fresh lookup finds the new directory, or nothing. Only a mount keeps leading
  // a lookup to a removed directory.
  return first.kind === "removed" ? walk(path, options) : first;
}

const MOUNT_FIX =
  "mount nothing over the Workload API directory or a directory on its path: keep the agent's sockets on a local file system (unmount what is mounted there)";

/** Judges the mount of the directory `fd` at `at` (./gate.ts); a refusal is UnsafePathError. */
function judged(fd: number, at: string, below: FdMount | undefined, last: boolean): FdMount {
  const found = fdMount(fd);
  // Both mounts held open while compared: the same id is the same mount.
  if (below !== undefined && found.mountId === below.mountId) return found;
  try {
    gate.judge(found, { at, fix: MOUNT_FIX, open: last });
  } catch (error) {
    if (!(error instanceof UntrustedMountError)) throw error;
    throw new UnsafePathError(at, error.message, error.fix);
  }
  return found;
}

function walk(path: string, options: TrustedPathOptions): TrustedDirectory {
  const uid = options.uid ?? process.getuid?.() ?? 0;
  const pending = names(path);
  let links = 0;
  let at = "/";
  let fd = openSync("/", O_PATH | constants.O_DIRECTORY);
  try {
    let mount = judged(fd, at, undefined, false);
    let stat = fstatSync(fd);
    for (let name = pending.shift(); name !== undefined; name = pending.shift()) {
      checkSearched(stat, at, uid);
      const next = join(at, name);
      const entryPath = `/proc/self/fd/${fd}/${name}`;
      let nextFd: number;
      try {
        nextFd = openAt(fd, name, STEP);
      } catch (error) {
        if (isErrno(error, "ENOENT")) {
          // A removed directory has no entries: what the path names next is out of reach.
          return stat.nlink === 0 ? { kind: "removed", at } : { kind: "missing", at: next };
        }
        if (!isErrno(error, "ELOOP") && !isErrno(error, "ENOTDIR")) throw error;
        const entry = lstatIfThere(entryPath, next, mount, pending.length === 0);
        if (!entry) return { kind: "missing", at: next };
        if (!entry.isSymbolicLink()) return { kind: "not-directory", at: next };
        checkPlaced(entry, stat, at, next, uid);
        const target = readlinkSync(entryPath);
        if (!options.followLinks) {
          throw new UnsafePathError(
            next,
            `${next} is a symbolic link (to ${target})`,
            "give the path without links, or allow links on it explicitly (--allow-symlinked-socket-dir)",
          );
        }
        if (++links > MAX_LINKS) {
          throw new UnsafePathError(
            next,
            `more than ${MAX_LINKS} symbolic links on the way to ${path}`,
            "give the path without links",
          );
        }
        pending.unshift(...names(target));
        if (target.startsWith("/")) {
          closeSync(fd);
          // Closed: not to be closed again should the next open fail (its number may be reused).
          fd = -1;
          fd = openSync("/", O_PATH | constants.O_DIRECTORY);
          at = "/";
          mount = judged(fd, at, undefined, false);
          stat = fstatSync(fd);
        }
        continue;
      }
      closeSync(fd);
      fd = nextFd;
      mount = judged(fd, next, mount, pending.length === 0);
      const parent = stat;
      stat = fstatSync(fd);
      checkPlaced(stat, parent, at, next, uid);
      at = next;
    }
    if (stat.nlink === 0) return { kind: "removed", at };
    const handle = new DirectoryHandle(fd, mount, stat);
    fd = -1;
    return { kind: "directory", handle };
  } finally {
    if (fd !== -1) closeSync(fd);
  }
}

function names(path: string): string[] {
  return path.split("/").filter((name) => name !== "" && name !== ".");
}

/**
 * What is at `path` (an entry of a directory on the mount `below`), a link not followed: held
 * by an O_PATH descriptor, and judged should it be the root of a mount (a file can be one).
 */
function lstatIfThere(path: string, at: string, below: FdMount, last: boolean): Stats | undefined {
  let fd: number;
  try {
    fd = openSync(path, O_PATH | constants.O_NOFOLLOW);
  } catch (error) {
    if (isErrno(error, "ENOENT")) return undefined;
    throw error;
  }
  try {
    judged(fd, at, below, last);
    return fstatSync(fd);
  } finally {
    closeSync(fd);
  }
}

function trusted(owner: number, uid: number): boolean {
  return owner === 0 || owner === uid;
}

function modeOf(stat: Stats): string {
  return (stat.mode & 0o7777).toString(8).padStart(4, "0");
}

/** A directory a name is looked up in: only root may change what it holds. */
function checkSearched(stat: Stats, at: string, uid: number): void {
  if (!trusted(stat.uid, uid)) {
    throw new UnsafePathError(
      at,
      `${at} is owned by uid ${stat.uid}, not root: that user could replace what the path leads to`,
      `make root its owner, writable by root alone (chown root ${at}; chmod go-w ${at}), or keep the directory in a tree only root can change`,
    );
  }
  if ((stat.mode & GROUP_OR_OTHER_WRITE) !== 0 && (stat.mode & STICKY) === 0) {
    throw new UnsafePathError(
      at,
      `${at} is writable by its group or by others (mode ${modeOf(stat)}): they could replace what the path leads to`,
      `make it writable by root alone (chmod go-w ${at}), or keep the directory in a tree only root can change`,
    );
  }
}

/** The entry `next` found in `parent`: in a sticky directory others write to, it must be root's. */
function checkPlaced(entry: Stats, parent: Stats, at: string, next: string, uid: number): void {
  if ((parent.mode & GROUP_OR_OTHER_WRITE) === 0 || trusted(entry.uid, uid)) return;
  throw new UnsafePathError(
    next,
    `${next} belongs to uid ${entry.uid} and is in ${at}, where others may create entries (mode ${modeOf(parent)}): anyone could have put it there`,
    `keep the directory below one only root can write to (e.g. /run/spire/agent-sockets), or make root the owner of ${next}`,
  );
}
