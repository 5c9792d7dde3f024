import { ptr } from "bun:ffi";
import { closeSync, openSync, readSync } from "node:fs";
import { constants } from "node:os";
import { type Libc, libc } from "./libc.ts";
import { type MountInfo, MountTableTooLarge, parseMountInfo } from "./mountinfo.ts";

/**
 * The gate before any look at a directory the driver does not own.
 *
 * A stat, a lookup or a listing in a directory served by a process (FUSE) or over the network
 * (NFS, CIFS, 9p) waits for that server; one that stops answering holds the caller in the
 * kernel, the event loop with it, and SIGTERM cannot end it. Opening a directory with O_PATH
 * does not reach the server when the directory is the root of a mount (the lookup is done in
 * the directory below it). So the directory is opened that way and its mount judged before
 * anything else is asked of it: only mounts of the local kernel file systems below, which
 * answer from memory or a local disk, are looked into; any other type is refused with
 * UntrustedMountError, before a single request reaches it.
 *
 * The mount is told without its file system's server: statx(2) on the descriptor with
 * AT_STATX_DONT_SYNC asks for the mount's unique id (STATX_MNT_ID_UNIQUE, Linux 6.8), which the
 * kernel's VFS fills in itself, while FUSE and NFS answer the rest from what they hold in memory,
 * sending no request. That id is never given to another mount, so what statmount(2) says of it
 * (its file system type, its place) is learnt once and holds for as long as the driver runs:
 * judging a mount seen before costs one system call, a new one two, and nothing reads the
 * mount table. Nothing a file system's server says (an inode number, say) counts: a server
 * chooses those.
 *
 * Where the kernel does not give unique ids (before Linux 6.8, or bun:ffi unavailable), and
 * for a descriptor statx refuses (a FUSE mount without allow_other refuses root with EACCES),
 * the mount is told by its id in /proc/self/fdinfo (mnt_id) and judged from the mount table,
 * /proc/self/mountinfo. Those ids are given again, lowest free first, once a mount is gone: a
 * verdict from the table holds only while the table has not changed (poll(2) on an open
 * /proc/self/mountinfo says POLLPRI once it does; any other answer, an error or a descriptor
 * no longer open among them, counts as a change too). Where another user may mount
 * (`Meeting.open`), a verdict from before a change is never used: the table is read again.
 * That costs a read of the whole table, on the event loop, once after each change, in the
 * first call that meets such a place: a few milliseconds at a thousand mounts, some tens at
 * twenty thousand (a publish changes the table, so on those kernels each publish pays one read).
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

/** The mount an open file is on. */
export interface FdMount {
  /**
   * The mount's id in the mount table (mnt_id): the same kind of id wherever the driver compares
   * mounts or looks one up in /proc/self/mountinfo. Given to another mount once this one is gone.
   */
  mountId: number;
  /** The kernel's 64-bit id of the mount, never given to another; undefined where not told. */
  uniqueId: bigint | undefined;
}

/** What the gate knows of a mount it judged. */
export interface JudgedMount {
  mountId: number;
  fsType: string;
  /** What was mounted (a device, a server's share); empty where the kernel does not say. */
  source: string;
  mountPoint: string;
}

/** Where a directory was met. */
export interface Meeting {
  /** What the caller calls it, for the message. */
  at: string;
  /** What to change, for the message. */
  fix: string;
  /**
   * Whether another user may have mounted a file system of their own there (the agent's own
   * directory, a pod's target): without unique mount ids, a verdict from before a change of the
   * mount table is then not used.
   */
  open: boolean;
}

export interface MountGateOptions {
  /** The mount table to read without unique mount ids: this process's, or a stand-in in tests. */
  table?: string;
  /** Whether to ask the kernel for unique mount ids (statx, statmount); false: the table only. */
  kernel?: boolean;
}

const FDINFO_BYTES = 256;
const fdinfoBuffer = Buffer.alloc(FDINFO_BYTES);

/** The mount id of an open file from /proc/self/fdinfo: no file system server is asked. */
function fdinfoMountId(fd: number): number {
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
  return Number(mountId);
}

// From the kernel's include/uapi/linux/fcntl.h, stat.h and mount.h.
const AT_EMPTY_PATH = 0x1000;
const AT_STATX_DONT_SYNC = 0x4000;
const STATX_MNT_ID_UNIQUE = 0x4000;
const STATX_BYTES = 256;
const STATX_MASK = 0;
const STATX_MNT_ID = 144;
// statmount(2): the same number on x86_64 and arm64 (and every architecture of the generic table).
const SYS_STATMOUNT = 457;
const MNT_ID_REQ_SIZE_VER0 = 24;
const STATMOUNT_MNT_BASIC = 0x2n;
const STATMOUNT_MNT_POINT = 0x10n;
const STATMOUNT_FS_TYPE = 0x20n;
const STATMOUNT_FS_SUBTYPE = 0x100n;
const STATMOUNT_SB_SOURCE = 0x200n;
// Linux 6.8.
const STATMOUNT_BASICS = STATMOUNT_MNT_BASIC | STATMOUNT_MNT_POINT | STATMOUNT_FS_TYPE;
// Linux 6.15: the file system's subtype (sshfs in fuse.sshfs), and what was mounted.
const STATMOUNT_NAMES = STATMOUNT_FS_SUBTYPE | STATMOUNT_SB_SOURCE;
// struct statmount: the offsets of its fields, and where its strings begin (after the header).
const SM_MASK = 8;
const SM_FS_TYPE = 36;
const SM_MNT_ID = 40;
const SM_MNT_ID_OLD = 56;
const SM_MNT_POINT = 108;
const SM_FS_SUBTYPE = 120;
const SM_SB_SOURCE = 124;
const SM_STRINGS = 512;
// The header, and a mount point of PATH_MAX with the other strings.
const STATMOUNT_BYTES = SM_STRINGS + 3 * 4096;
const { EINVAL, ENOSYS } = constants.errno;

const emptyPath = new Uint8Array(1);
const statxBuffer = new Uint8Array(STATX_BYTES);
const statxView = new DataView(statxBuffer.buffer);
const request = new Uint8Array(MNT_ID_REQ_SIZE_VER0);
const requestView = new DataView(request.buffer);
const statmountBuffer = new Uint8Array(STATMOUNT_BYTES);
const statmountView = new DataView(statmountBuffer.buffer);

/** Past this, the mount table is not read: a node with that many mounts has another problem. */
const MAX_TABLE_BYTES = 16 * 1024 * 1024;
const READ_CHUNK = 256 * 1024;
const POLLPRI = 0x2;
const POLLNVAL = 0x20;
// Mounts remembered at most (a path crosses a few mounts; each published target is one).
const MAX_KNOWN = 4096;

/** A mount statmount described, by unique id. */
interface Described extends JudgedMount {
  /** Whether the kernel said what was mounted (sb_source, Linux 6.15). */
  sourceKnown: boolean;
}

/** A verdict from the mount table, and the changes of the table seen when it was given. */
interface Verdict {
  mount: MountInfo;
  generation: number;
}

/**
 * Judges mounts: by unique id where the kernel gives one, else from the mount table (see the
 * description at the top of this file).
 */
export class MountGate {
  /** Whether to ask the kernel; false once it turned out not to give unique ids. */
  private kernel: boolean;
  /** Mounts described by the kernel, by unique id: never stale, an id is never given again. */
  private readonly described = new Map<bigint, Described>();
  /** The mount table as last read (with a newline before its first line), when it is. */
  private table: Buffer | undefined;
  /** An open /proc/self/mountinfo, read once: poll says when the table changes after that. */
  private watch = -1;
  private readonly pollFd = new Int32Array(2);
  /** Changes of the table seen so far, and how many of them the table as read includes. */
  private generation = 0;
  private tableGeneration = -1;
  private readonly verdicts = new Map<number, Verdict>();
  private readonly path: string;
  /** Reads of the whole table so far (for tests and measurements). */
  reads = 0;
  /** statmount calls so far (for tests and measurements). */
  statmounts = 0;

  constructor(options: MountGateOptions = {}) {
    this.path = options.table ?? "/proc/self/mountinfo";
    this.kernel = options.kernel ?? options.table === undefined;
  }

  /**
   * The mount the open file `fd` is on, asking no file system server: with unique ids, one
   * statx (and for a mount not seen before, one statmount); else a read of its fdinfo.
   */
  mountOf(fd: number): FdMount {
    const uniqueId = this.kernel ? this.uniqueIdOf(fd) : undefined;
    const known = uniqueId === undefined ? undefined : this.describe(uniqueId);
    if (uniqueId !== undefined && known) return { mountId: known.mountId, uniqueId };
    return { mountId: fdinfoMountId(fd), uniqueId: undefined };
  }

  /**
   * The mount `found` (from mountOf), met at `where`, judged: what is known of it when its file
   * system is local, else UntrustedMountError. With unique ids, a mount seen before costs no
   * system call.
   */
  judge(found: FdMount, where: Meeting): JudgedMount {
    const known = found.uniqueId === undefined ? undefined : this.describe(found.uniqueId);
    if (!known) return this.judgeFromTable(found.mountId, where);
    if (isLocalFileSystem(known.fsType)) return known;
    const told = known.sourceKnown ? known : this.lookupQuietly(known.mountId);
    throw new UntrustedMountError(where.at, told ?? known, where.fix);
  }

  /** The mount table's entry for `mountId`, from a read made after its last change. */
  lookup(mountId: number): MountInfo | undefined {
    // An id the table as read does not hold: mounted since, perhaps.
    if (!this.fresh() || !this.line(mountId)) this.read();
    return this.line(mountId);
  }

  /** The unique id of the mount of `fd`, or undefined when the kernel does not say it. */
  private uniqueIdOf(fd: number): bigint | undefined {
    const call = libc();
    if (!call) {
      this.kernel = false;
      return undefined;
    }
    const result = call.statx(
      fd,
      ptr(emptyPath) as unknown as number,
      AT_EMPTY_PATH | AT_STATX_DONT_SYNC,
      STATX_MNT_ID_UNIQUE,
      ptr(statxBuffer) as unknown as number,
    );
    if (result !== 0) {
      // ENOSYS: no statx at all. Any other error (EACCES from a FUSE mount that lets only its
      // owner in) is this descriptor's: it is told from fdinfo and the table.
      if (call.errno() === ENOSYS) this.kernel = false;
      return undefined;
    }
    if ((statxView.getUint32(STATX_MASK, true) & STATX_MNT_ID_UNIQUE) === 0) {
      // Before Linux 6.8: the id given would be the table's, which is given again.
      this.kernel = false;
      return undefined;
    }
    return statxView.getBigUint64(STATX_MNT_ID, true);
  }

  /** What statmount says of the mount `uniqueId`, remembered; undefined when it says nothing. */
  private describe(uniqueId: bigint): Described | undefined {
    const known = this.described.get(uniqueId);
    if (known) return known;
    if (!this.kernel) return undefined;
    const call = libc();
    if (!call) return undefined;
    let result = this.statmount(call, uniqueId, STATMOUNT_BASICS | STATMOUNT_NAMES);
    // A kernel that knows statmount but not every field asked for.
    if (result === EINVAL) result = this.statmount(call, uniqueId, STATMOUNT_BASICS);
    if (result === ENOSYS) this.kernel = false;
    // ENOENT: the mount is no longer in this namespace (detached while held open); the table
    // does not hold it either, which refuses it.
    if (result !== 0) return undefined;
    const mask = statmountView.getBigUint64(SM_MASK, true);
    if ((mask & STATMOUNT_BASICS) !== STATMOUNT_BASICS) return undefined;
    const subtype = (mask & STATMOUNT_FS_SUBTYPE) !== 0n ? this.string(SM_FS_SUBTYPE) : "";
    const sourceKnown = (mask & STATMOUNT_SB_SOURCE) !== 0n;
    const mount: Described = {
      mountId: statmountView.getUint32(SM_MNT_ID_OLD, true),
      // As the mount table names it: fuse.sshfs.
      fsType: subtype ? `${this.string(SM_FS_TYPE)}.${subtype}` : this.string(SM_FS_TYPE),
      source: sourceKnown ? this.string(SM_SB_SOURCE) : "",
      mountPoint: this.string(SM_MNT_POINT),
      sourceKnown,
    };
    if (statmountView.getBigUint64(SM_MNT_ID, true) !== uniqueId) return undefined;
    if (this.described.size >= MAX_KNOWN) this.described.clear();
    this.described.set(uniqueId, mount);
    return mount;
  }

  /** statmount(2) into statmountBuffer: 0, or the errno. */
  private statmount(call: Libc, uniqueId: bigint, fields: bigint): number {
    this.statmounts++;
    requestView.setUint32(0, MNT_ID_REQ_SIZE_VER0, true);
    requestView.setUint32(4, 0, true);
    requestView.setBigUint64(8, uniqueId, true);
    requestView.setBigUint64(16, fields, true);
    const result = call.syscall(
      BigInt(SYS_STATMOUNT),
      ptr(request) as unknown as number,
      ptr(statmountBuffer) as unknown as number,
      BigInt(STATMOUNT_BYTES),
      0n,
    );
    return result === 0n ? 0 : call.errno();
  }

  /** The string at the offset the statmount field at `field` gives. */
  private string(field: number): string {
    const start = SM_STRINGS + statmountView.getUint32(field, true);
    const end = statmountBuffer.indexOf(0, start);
    return Buffer.from(
      statmountBuffer.buffer,
      start,
      (end === -1 ? STATMOUNT_BYTES : end) - start,
    ).toString("utf8");
  }

  /** The table's entry for a refusal's message; a table that cannot be read says nothing. */
  private lookupQuietly(mountId: number): MountInfo | undefined {
    try {
      return this.lookup(mountId);
    } catch {
      return undefined;
    }
  }

  private judgeFromTable(mountId: number, where: Meeting): MountInfo {
    const known = this.verdicts.get(mountId);
    // Where only root mounts, the id still names the mount judged; elsewhere, only while the
    // table is the one the verdict came from.
    if (known && (!where.open || (this.fresh() && known.generation === this.generation))) {
      return known.mount;
    }
    const mount = this.lookup(mountId);
    if (!mount || !isLocalFileSystem(mount.fsType)) {
      throw new UntrustedMountError(where.at, mount, where.fix);
    }
    if (this.verdicts.size >= MAX_KNOWN) this.verdicts.clear();
    this.verdicts.set(mountId, { mount, generation: this.generation });
    return mount;
  }

  /** The line of `mountId` in the table as read, parsed; only that line is. */
  private line(mountId: number): MountInfo | undefined {
    const table = this.table;
    if (!table) return undefined;
    const start = table.indexOf(`\n${mountId} `, 0, "latin1");
    if (start === -1) return undefined;
    const end = table.indexOf(10, start + 1);
    return parseMountInfo(table.toString("utf8", start + 1, end === -1 ? table.length : end))[0];
  }

  /** Whether the table as read is the table now (never, when that cannot be told). */
  private fresh(): boolean {
    const call = libc();
    if (this.watch === -1 || call === null) {
      this.generation++;
      return false;
    }
    this.pollFd[0] = this.watch;
    // events POLLPRI, revents 0: two shorts after the int.
    this.pollFd[1] = POLLPRI;
    const ready = call.poll(ptr(this.pollFd) as unknown as number, 1, 0);
    if (ready === 0) return this.tableGeneration === this.generation;
    // Changed (POLLPRI, said once, to the first poll after the change), or not to be told:
    // an error, POLLERR, or POLLNVAL (the descriptor is no longer open, so it is not closed
    // again: its number may be someone else's by now). The next look reads the table afresh.
    const revents = (this.pollFd[1] >>> 16) & 0xffff;
    if (ready < 0 || (revents & POLLNVAL) === 0) closeSync(this.watch);
    this.watch = -1;
    this.generation++;
    return false;
  }

  /** Reads the whole table, bounded, from a fresh open (whose state poll watches from then). */
  private read(): void {
    if (this.watch !== -1) closeSync(this.watch);
    this.watch = -1;
    this.table = undefined;
    const fd = openSync(this.path, "r");
    // A newline first: every line, the first too, is found as "\n<id> ".
    let table = Buffer.allocUnsafe(READ_CHUNK);
    table[0] = 10;
    let total = 1;
    try {
      for (;;) {
        if (table.length - total < READ_CHUNK / 4) {
          const larger = Buffer.allocUnsafe(table.length * 2);
          table.copy(larger, 0, 0, total);
          table = larger;
        }
        const length = readSync(fd, table, total, table.length - total, null);
        if (length === 0) break;
        total += length;
        if (total > MAX_TABLE_BYTES) {
          throw new MountTableTooLarge(
            `${this.path} is larger than ${MAX_TABLE_BYTES} bytes (the node has too many mounts to check)`,
          );
        }
      }
    } catch (error) {
      closeSync(fd);
      throw error;
    }
    this.watch = fd;
    this.tableGeneration = this.generation;
    this.reads++;
    this.table = table.subarray(0, total);
  }
}

/** This process's gate. */
export const gate = new MountGate();

/**
 * The mount an open file is on, asking no file system server (see MountGate.mountOf): one
 * statx where the kernel gives unique mount ids.
 */
export function fdMount(fd: number): FdMount {
  return gate.mountOf(fd);
}
