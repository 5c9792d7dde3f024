import {
  chmodSync,
  closeSync,
  constants,
  existsSync,
  fstatSync,
  lstatSync,
  mkdirSync,
  openSync,
  readlinkSync,
  realpathSync,
  renameSync,
  unlinkSync,
} from "node:fs";
import { basename, dirname } from "node:path";
import { O_PATH } from "../linux/descriptors.ts";
import { isErrno } from "../linux/errno.ts";

const GROUP_OR_OTHER_WRITE = 0o022;
const STICKY = 0o1000;

/** What to do about a socket directory that `socketDirectoryProblem` refuses. */
export const SOCKET_DIRECTORY_FIX =
  "give the socket a directory of its own, owned by root (the driver's user) and writable by it alone (chown root:root DIR; chmod 0750 DIR), in a tree only root can change; or name one that does not exist and the driver creates it";

/**
 * Why `dir` is unsafe for a socket the kubelet trusts, or undefined when it is safe. Whoever can
 * write to the socket's directory can replace the socket (and clients then talk to them) or plant
 * one that blocks the start, so the directory must belong to the driver's user (root in a
 * DaemonSet) and be writable by nobody else, sticky or not. Every directory above it must belong
 * to root or that user and be writable by nobody else, unless it is sticky (as /tmp is), where
 * nobody else can rename what is not theirs. A directory that does not exist yet is judged by its
 * nearest existing ancestor: the driver creates the rest, as its own, with mode 0750.
 */
export function socketDirectoryProblem(
  dir: string,
  uid: number = process.getuid?.() ?? 0,
): string | undefined {
  let existing = dir;
  while (!existsSync(existing)) existing = dirname(existing);
  let real: string;
  try {
    real = realpathSync(existing);
  } catch (error) {
    return `cannot resolve the socket directory ${existing}: ${(error as Error).message}`;
  }
  const owners = uid === 0 ? "root" : `root or uid ${uid}`;
  const parts = real.split("/").filter(Boolean);
  const chain = ["/", ...parts.map((_, i) => `/${parts.slice(0, i + 1).join("/")}`)];
  for (const path of chain) {
    const stat = lstatSync(path);
    const own = path === real && existing === dir;
    const mode = (stat.mode & 0o7777).toString(8).padStart(4, "0");
    if (own && stat.uid !== uid) {
      return `the socket directory ${dir} is owned by uid ${stat.uid}, not by the driver's uid ${uid}`;
    }
    if (!own && stat.uid !== 0 && stat.uid !== uid) {
      return `${path}, above the socket directory ${dir}, is owned by uid ${stat.uid}, not by ${owners}`;
    }
    const writable = (stat.mode & GROUP_OR_OTHER_WRITE) !== 0;
    if (own && writable) {
      return `the socket directory ${dir} is writable by its group or by others (mode ${mode})`;
    }
    if (!own && writable && (stat.mode & STICKY) === 0) {
      return `${path}, above the socket directory ${dir}, is writable by its group or by others and not sticky (mode ${mode})`;
    }
  }
  return undefined;
}

/** The same rule for the directory held open: its owner, its mode, and where it is. */
function heldDirectoryProblem(
  dirFd: number,
  dir: string,
  uid: number = process.getuid?.() ?? 0,
): string | undefined {
  const stat = fstatSync(dirFd);
  const location = readlinkSync(`/proc/self/fd/${dirFd}`);
  if (location !== realpathSync(dir)) {
    return `the socket directory ${dir} changed while it was being opened (now ${location})`;
  }
  if (stat.uid !== uid) {
    return `the socket directory ${dir} is owned by uid ${stat.uid}, not by the driver's uid ${uid}`;
  }
  if ((stat.mode & GROUP_OR_OTHER_WRITE) !== 0) {
    return `the socket directory ${dir} is writable by its group or by others (mode ${(stat.mode & 0o7777).toString(8).padStart(4, "0")})`;
  }
  return undefined;
}

/**
 * A Unix socket file served on, held through a descriptor of its directory. The listener binds
 * a private name and the socket is then renamed into place, because the runtime unlinks the bound
 * name when the listener closes, whatever file has taken that name by then. The driver keeps a
 * descriptor of the socket's inode too, so its (device, inode) pair cannot be reused, and removes
 * the socket only while the name still holds that inode.
 */
export class SocketFile {
  private socketFd: number | undefined;
  private closed = false;

  private constructor(
    readonly path: string,
    private readonly dirFd: number,
  ) {}

  /** Checks the socket's directory (creating it if missing) and opens it; a problem is thrown. */
  static open(path: string, refuse: (problem: string) => Error): SocketFile {
    const dir = dirname(path);
    const before = socketDirectoryProblem(dir);
    if (before) throw refuse(before);
    mkdirSync(dir, { recursive: true, mode: 0o750 });
    const after = socketDirectoryProblem(dir);
    if (after) throw refuse(after);
    const dirFd = openSync(dir, constants.O_RDONLY | constants.O_DIRECTORY);
    // The directory held is the one checked: a name swapped in between is refused too.
    const held = heldDirectoryProblem(dirFd, dir);
    if (held) {
      closeSync(dirFd);
      throw refuse(held);
    }
    return new SocketFile(path, dirFd);
  }

  private get name(): string {
    return basename(this.path);
  }

  /** The socket's path through the directory's descriptor: never resolved through its name again. */
  get pathInDirectory(): string {
    return `/proc/self/fd/${this.dirFd}/${this.name}`;
  }

  /** The name the listener binds before the socket is moved into place. */
  get bindPath(): string {
    return `/proc/self/fd/${this.dirFd}/.${this.name}.new`;
  }

  /** Removes a socket left at the bind name by a driver killed while it was binding. */
  clearBindPath(): void {
    try {
      if (lstatSync(this.bindPath).isSocket()) unlinkSync(this.bindPath);
    } catch (error) {
      if (!isErrno(error, "ENOENT")) throw error;
    }
  }

  /** Makes the freshly bound socket private to root and moves it to its name. */
  adopt(): void {
    chmodSync(this.bindPath, 0o600);
    this.socketFd = openSync(this.bindPath, O_PATH | constants.O_NOFOLLOW);
    renameSync(this.bindPath, this.pathInDirectory);
  }

  /** Removes the socket if its name still holds the socket this driver bound; closes it all. */
  remove(): void {
    try {
      if (this.socketFd !== undefined) {
        const bound = fstatSync(this.socketFd);
        const current = lstatSync(this.pathInDirectory);
        if (current.isSocket() && current.dev === bound.dev && current.ino === bound.ino) {
          unlinkSync(this.pathInDirectory);
        }
      }
    } catch (error) {
      if (!isErrno(error, "ENOENT")) throw error;
    } finally {
      this.close();
    }
  }

  /** Closes the descriptors without touching the socket. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    if (this.socketFd !== undefined) closeSync(this.socketFd);
    closeSync(this.dirFd);
  }
}
