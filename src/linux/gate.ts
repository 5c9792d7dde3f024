import { dlopen, FFIType, ptr } from "bun:ffi";
import { closeSync, openSync, readSync } from "node:fs";
import { type MountInfo, parseMountInfo } from "./mountinfo.ts";

/**
 * The gate before any look at a directory the driver does not own.
 *
 * A stat, a lookup or a listing in a directory served by a process (FUSE) or over the network
 * (NFS, CIFS, 9p) waits for that server; one that stops answering holds the caller in the
 * kernel, the event loop with it, and SIGTERM cannot end it. Opening a directory with O_PATH
 * does not reach the server when the directory is the root of a mount (the lookup is done in
 * the directory below it), and neither do /proc/self/fdinfo (the mount id, the inode number)
 * nor /proc/self/mountinfo (the type of the file system at each mount id). So the directory is
 * opened that way and its mount judged before anything else is asked of it: only mounts of the
 * local kernel file systems below, which answer from memory or a local disk, are looked into;
 * any other type is refused with UntrustedMountError, before a single request reaches it.
 *
 * The mount table is read again only when a verdict cannot be trusted without it. A verdict
 * holds while the table has not changed (the kernel signals a change to poll(2) on an open
 * /proc/self/mountinfo, POLLPRI). After a change, a mount id may have been given to another
 * mount once its own was gone; the verdict is kept only where the directory met there is the
 * very root judged then (the inode number fdinfo gives), and that root could not be a FUSE
 * file system's: FUSE gives its root the inode number 1, which tmpfs and the kernel's own file
 * systems give theirs too, so a root with that number at a place the agent can mount over is
 * judged from a fresh read.
 */

/**
 * File systems the kernel serves from memory or a local block device: no process and no
 * network stands between a system call and its answer.
 */
export const LOCAL_FILE_SYSTEMS: ReadonlySet<string> = new Set([
  // Disk file systems.
  "ext2",
  "ext3",
  "ext4",
  "xfs",
  "btrfs",
  "zfs",
  "f2fs",
  "vfat",
  "exfat",
  "erofs",
  "squashfs",
  "iso9660",
  // Memory.
  "tmpfs",
  "ramfs",
  "overlay",
  "devtmpfs",
  "hugetlbfs",
  "mqueue",
  // The kernel's own views.
  "proc",
  "sysfs",
  "devpts",
  "cgroup",
  "cgroup2",
  "securityfs",
  "selinuxfs",
  "bpf",
  "tracefs",
  "debugfs",
  "configfs",
  "pstore",
  "efivarfs",
  "nsfs",
]);

/** Whether the file system type `fsType` answers without a server (see LOCAL_FILE_SYSTEMS). */
export function isLocalFileSystem(fsType: string): boolean {
  return LOCAL_FILE_SYSTEMS.has(fsType);
}

/** A directory is on a mount whose file system could hang the caller: it is not looked into. */
export class UntrustedMountError extends Error {
  override name = "UntrustedMountError";
  readonly code = "EUNTRUSTEDMOUNT";

  constructor(
    /** Where the mount was met, as the caller names it. */
    readonly at: string,
    readonly mount: Pick<MountInfo, "mountId" | "fsType" | "source" | "mountPoint"> | undefined,
    readonly fix: string,
  ) {
    super(
      mount
        ? `${at} is on a ${mount.fsType} mount (source ${JSON.stringify(mount.source)}, at ${JSON.stringify(mount.mountPoint)}), a file system served by a process or over the network that can stop answering; the driver does not look into it`
        : `${at} is on a mount that is not in the mount table; the driver does not look into it`,
    );
  }
}

/** What fdinfo says of an open file: its mount, and its inode number when the kernel says it. */
export interface FdMount {
  mountId: number;
  ino: number | undefined;
}

const FDINFO_BYTES = 256;
const fdinfoBuffer = Buffer.alloc(FDINFO_BYTES);

/** The mount (and inode number) of an open file, from /proc/self/fdinfo: no file system server. */
export function fdMount(fd: number): FdMount {
  // A few lines that procfs makes up on the spot: one read, no blocking.
  const info = openSync(`/proc/self/fdinfo/${fd}`, "r");
  let text: string;
  try {
    const length = readSync(info, fdinfoBuffer, 0, FDINFO_BYTES, null);
    text = fdinfoBuffer.toString("latin1", 0, length);
  } finally {
    closeSync(info);
  }
  const mountId = /^mnt_id:\s*(\d+)$/m.exec(text)?.[1];
  if (mountId === undefined) {
    throw new Error(`no mnt_id in /proc/self/fdinfo/${fd} (is /proc mounted?)`);
  }
  const ino = /^ino:\s*(\d+)$/m.exec(text)?.[1];
  return { mountId: Number(mountId), ino: ino === undefined ? undefined : Number(ino) };
}

/** Past this, the mount table is not read: a node with that many mounts has another problem. */
const MAX_TABLE_BYTES = 16 * 1024 * 1024;
const READ_CHUNK = 256 * 1024;
// FUSE gives its root the inode number 1, whatever the server says.
const FUSE_ROOT_INO = 1;
const POLLPRI = 0x2;
// Verdicts kept at most (a path crosses a few mounts; each published target is one).
const MAX_VERDICTS = 4096;
const MAX_VOUCHED = 4;
const POLLERR = 0x8;

type Poll = (fds: number, count: number, timeout: number) => number;
let pollSymbol: Poll | undefined | null;

/** glibc's poll(2), opened on first use; null where it cannot be (then every look re-reads). */
function poll(): Poll | null {
  if (pollSymbol === undefined) {
    try {
      const { symbols } = dlopen("libc.so.6", {
        poll: { args: [FFIType.ptr, FFIType.u64, FFIType.i32], returns: FFIType.i32 },
      });
      pollSymbol = symbols.poll as unknown as Poll;
    } catch {
      pollSymbol = null;
    }
  }
  return pollSymbol;
}

interface Verdict {
  mount: MountInfo;
  /** The inode number of the mount's root, as met when judged. */
  rootIno: number | undefined;
  /** The changes of the table seen when it was given. */
  generation: number;
}

/** Where a directory was met, for how far a verdict from before a change of the table holds. */
export interface Meeting {
  /** What the caller calls it, for the message. */
  at: string;
  /** What to change, for the message. */
  fix: string;
  /**
   * Whether another user may have mounted a file system of their own there (the agent's own
   * directory, a pod's target): a root with FUSE's inode number is then judged afresh.
   */
  open: boolean;
}

/** The mount table as last read, verdicts by mount id, and whether the table changed since. */
export class MountGate {
  private table = new Map<number, MountInfo>();
  /** An open /proc/self/mountinfo, read once: poll says when the table changes after that. */
  private watch = -1;
  private readonly pollFd = new Int32Array(2);
  /** Changes of the table seen so far, and how many of them the table as read includes. */
  private generation = 0;
  private tableGeneration = -1;
  private readonly verdicts = new Map<number, Verdict>();
  /** Inode numbers of directories the trusted walk vouched for (see vouch). */
  private readonly vouched: number[] = [];
  /** Reads of the whole table so far (for tests and measurements). */
  reads = 0;

  constructor(private readonly path = "/proc/self/mountinfo") {}

  /**
   * The mount of a directory met at `where`, judged: its table entry when its file system is
   * local, else UntrustedMountError. `found` is what fdinfo says of the directory; `root`,
   * whether the directory is the root of that mount (its mount differs from its parent's).
   */
  judge(found: FdMount, root: boolean, where: Meeting): MountInfo {
    const known = this.verdicts.get(found.mountId);
    if (known && this.stillHolds(known, found, root, where)) return known.mount;
    const mount = this.lookup(found.mountId);
    if (!mount || !isLocalFileSystem(mount.fsType)) {
      throw new UntrustedMountError(where.at, mount, where.fix);
    }
    if (this.verdicts.size >= MAX_VERDICTS) this.verdicts.clear();
    this.verdicts.set(found.mountId, {
      mount,
      rootIno: root ? found.ino : undefined,
      generation: this.generation,
    });
    return mount;
  }

  /** The mount table's entry for `mountId`, from a read made after its last change. */
  lookup(mountId: number): MountInfo | undefined {
    if (!this.fresh() || !this.table.has(mountId)) this.read();
    return this.table.get(mountId);
  }

  /**
   * Says that the directory with inode number `ino` was judged as a whole path: a mount whose
   * root has that number is taken for a bind of it (see judgeTarget).
   */
  vouch(ino: number | undefined): void {
    if (ino === undefined || ino === FUSE_ROOT_INO || this.vouched.includes(ino)) return;
    this.vouched.push(ino);
    if (this.vouched.length > MAX_VOUCHED) this.vouched.shift();
  }

  /**
   * Judges a directory met as the root of a mount on a directory the caller judged (a volume's
   * target): one whose root has the inode number of a directory the trusted walk vouched for
   * is a bind of it, on the file system judged then (a FUSE root has inode number 1, which is
   * never vouched for); any other is judged by the mount table.
   */
  judgeTarget(found: FdMount, where: Meeting): void {
    if (found.ino !== undefined && this.vouched.includes(found.ino)) return;
    this.judge(found, true, where);
  }

  /** Whether a verdict from an earlier read still holds for the directory `found`. */
  private stillHolds(known: Verdict, found: FdMount, root: boolean, where: Meeting): boolean {
    this.fresh();
    if (known.generation === this.generation) return true;
    // Inside a mount, nothing tells this mount from another given its id.
    if (!root || known.rootIno === undefined || found.ino !== known.rootIno) return false;
    return !(where.open && found.ino === FUSE_ROOT_INO);
  }

  /** Whether the table as read is the table now (never, when that cannot be told). */
  private fresh(): boolean {
    const call = poll();
    if (this.watch === -1 || call === null) {
      this.generation++;
      return false;
    }
    this.pollFd[0] = this.watch;
    // events POLLPRI, revents 0: two shorts after the int.
    this.pollFd[1] = POLLPRI;
    const ready = call(ptr(this.pollFd) as unknown as number, 1, 0);
    // The kernel says so once per change, to the first poll after it.
    if (ready > 0 && ((this.pollFd[1] >>> 16) & (POLLPRI | POLLERR)) !== 0) this.generation++;
    return this.tableGeneration === this.generation;
  }

  /** Reads the whole table, bounded, from a fresh open (whose state poll watches from then). */
  private read(): void {
    if (this.watch !== -1) closeSync(this.watch);
    this.watch = -1;
    const fd = openSync(this.path, "r");
    const chunks: Buffer[] = [];
    let total = 0;
    try {
      for (;;) {
        const chunk = Buffer.allocUnsafe(READ_CHUNK);
        const length = readSync(fd, chunk, 0, READ_CHUNK, null);
        if (length === 0) break;
        total += length;
        if (total > MAX_TABLE_BYTES) {
          throw new Error(
            `${this.path} is larger than ${MAX_TABLE_BYTES} bytes (the node has too many mounts to check)`,
          );
        }
        chunks.push(chunk.subarray(0, length));
      }
    } catch (error) {
      closeSync(fd);
      throw error;
    }
    this.watch = fd;
    this.tableGeneration = this.generation;
    this.reads++;
    this.table = new Map(
      parseMountInfo(Buffer.concat(chunks).toString("utf8")).map((mount) => [mount.mountId, mount]),
    );
  }
}

/** This process's gate. */
export const gate = new MountGate();
