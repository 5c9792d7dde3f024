import { status } from "@grpc/grpc-js";
import {
  type LabelOutcome,
  type NodeEvents,
  type NodeHost,
  type Source,
  type Volume,
  type VolumeData,
  VolumePathError,
} from "../../../src/csi/host.ts";
import type { DirectoryHandle } from "../../../src/linux/descriptors.ts";
import type { FileSystemUsage } from "../../../src/linux/file-operations.ts";
import {
  type Directory,
  directoryAt,
  type Inode,
  nothingAt,
  type TargetState,
} from "../../../src/linux/inspect.ts";
import type { HeldDirectory, Mounter, MountRoot } from "../../../src/linux/mounter.ts";

/**
 * A stand-in machine for the node service's rules: volume directories, targets, their mounts and
 * the Workload API directory as plain data, and a mounter that changes that data as `mount` and
 * `umount` would. Nothing here touches the real file system, so the rules run as any user.
 */

/** One mount stacked on a target: its id, and the directory it shows. */
export interface StandInMount {
  mountId: number;
  root: Inode;
}

export type StandInTarget =
  | { kind: "missing" | "symlink" | "not-directory" }
  | { kind: "directory"; inode: Inode; entries: number; mounts: StandInMount[] };

export interface StandInVolume {
  /** How the walk to the volume directory ends; present unless said otherwise. */
  walk?: "present" | VolumePathError;
  record?: VolumeData | Error;
  target: StandInTarget;
  /** The target was moved away while in use: it is no longer where the walk found it. */
  moved?: boolean;
}

export const DEV = 64;
/** The Workload API directory's own inode. */
export const SOURCE: Inode = { dev: DEV, ino: 1000, nlink: 2 };
const VOLUME_MOUNT_ID = 30;

export function errno(code: string, message = code): NodeJS.ErrnoException {
  return Object.assign(new Error(`${code}: ${message}`), { code });
}

class StandInDirectory implements Directory {
  private open = true;
  constructor(
    readonly fd: number,
    readonly inode: Inode,
    readonly mountId: number,
    private readonly where: string,
    private readonly world: StandInMachine,
  ) {}
  get dev() {
    return this.inode.dev;
  }
  get ino() {
    return this.inode.ino;
  }
  get nlink() {
    return this.inode.nlink;
  }
  get path() {
    return `/stand-in/fd/${this.fd}`;
  }
  get sharedPath() {
    return this.path;
  }
  location(): string {
    return this.where;
  }
  close(): void {
    if (!this.open) return;
    this.open = false;
    this.world.closed(this.fd);
  }
  [Symbol.dispose](): void {
    this.close();
  }
}

/** The machine: what NodeHost and Mounter see, and what the test set up and reads back. */
export class StandInMachine implements NodeHost, Mounter {
  /** The Workload API directory: there, missing or refused (a Source), or failing to open. */
  source: Source | "present" | Error = "present";
  readonly volumes = new Map<string, StandInVolume>();
  /** What the mounter was asked, in order: ["bind", target], ["unmount", target], ... */
  readonly calls: string[][] = [];
  /** Errors the next `mount` / `umount` fails with. */
  fail: { bind?: Error; unmount?: Error; unmountLeavesMount?: boolean } = {};
  private nextFd = 100;
  private nextMountId = 500;
  private nextIno = 5000;
  // Which target each open handle is on (by target path), for the mounter.
  private readonly handles = new Map<number, string | "source">();

  volume(targetPath: string, volume: StandInVolume): this {
    this.volumes.set(targetPath, volume);
    return this;
  }

  /** A directory inode of the volume's file system. */
  newInode(nlink = 2): Inode {
    return { dev: DEV, ino: this.nextIno++, nlink };
  }

  /** Handles still open: every call must close what it opened. */
  get openHandles(): number {
    return this.handles.size;
  }

  closed(fd: number): void {
    this.handles.delete(fd);
  }

  private open(inode: Inode, mountId: number, where: string, on: string): Directory {
    const fd = this.nextFd++;
    this.handles.set(fd, on);
    return new StandInDirectory(fd, inode, mountId, where, this);
  }

  // NodeHost

  openVolume(targetPath: string): Volume {
    const state = this.volumes.get(targetPath);
    if (!state) throw new VolumePathError("missing", targetPath.replace(/\/mount$/, ""));
    if (state.walk instanceof VolumePathError) throw state.walk;
    return this.volumeOf(targetPath, state);
  }

  openSource(): Source {
    if (this.source instanceof Error) throw this.source;
    if (this.source !== "present") return this.source;
    return { ok: true, dir: this.open(SOURCE, 20, "/run/spire/agent-sockets", "source") };
  }

  isEmpty(dir: Directory): boolean {
    const target = this.targetOfHandle(dir.fd);
    return target?.kind === "directory" && target.entries === 0;
  }

  chmod(): void {}

  sourceParentDevice(): number | undefined {
    return DEV;
  }

  async describeMount(mountId: number): Promise<string> {
    return `mount id ${mountId}`;
  }

  // Mounter

  async bindMount(source: HeldDirectory, target: HeldDirectory): Promise<void> {
    this.calls.push(["bind", target.path]);
    const error = this.fail.bind;
    if (error) throw error;
    const at = this.targetOfHandle(target.fd);
    if (this.handles.get(source.fd) !== "source") throw new Error("bound something else");
    if (at?.kind !== "directory") throw new Error("bind on no directory");
    at.mounts.push({ mountId: this.nextMountId++, root: SOURCE });
  }

  async unmount(target: MountRoot): Promise<void> {
    this.calls.push(["unmount", target.path]);
    const error = this.fail.unmount;
    if (error) throw error;
    const at = this.targetOfHandle(target.fd);
    if (at?.kind !== "directory" || at.mounts.length === 0) throw new Error("not mounted");
    if (!this.fail.unmountLeavesMount) at.mounts.pop();
  }

  async makeSlave(target: HeldDirectory): Promise<void> {
    this.calls.push(["slave", target.path]);
  }

  private targetOfHandle(fd: number): StandInTarget | undefined {
    const on = this.handles.get(fd);
    return on === undefined || on === "source" ? undefined : this.volumes.get(on)?.target;
  }

  private volumeOf(targetPath: string, state: StandInVolume): Volume {
    const machine = this;
    const fd = this.nextFd++;
    this.handles.set(fd, `volume:${targetPath}`);
    return {
      key: `${DEV}:${targetPath}`,
      targetLocation: targetPath,
      target(): TargetState {
        const target = state.target;
        if (target.kind !== "directory") return nothingAt(target.kind);
        const top = target.mounts.at(-1);
        const dir = top
          ? machine.open(top.root, top.mountId, targetPath, targetPath)
          : machine.open(target.inode, VOLUME_MOUNT_ID, targetPath, targetPath);
        return directoryAt(dir, top !== undefined);
      },
      createTarget(): boolean {
        if (state.target.kind !== "missing") return false;
        state.target = { kind: "directory", inode: machine.newInode(), entries: 0, mounts: [] };
        return true;
      },
      removeTarget(): void {
        const target = state.target;
        if (target.kind === "missing") throw errno("ENOENT");
        if (target.kind !== "directory") throw errno("ENOTDIR");
        if (target.mounts.length > 0) throw errno("EBUSY");
        if (target.entries > 0) throw errno("ENOTEMPTY");
        state.target = { kind: "missing" };
      },
      holds(): boolean {
        return state.moved !== true;
      },
      async record(): Promise<VolumeData | undefined> {
        if (state.record instanceof Error) throw state.record;
        return state.record;
      },
      hold(): DirectoryHandle | undefined {
        return undefined;
      },
      [Symbol.dispose](): void {
        machine.closed(fd);
      },
    };
  }
}

/** A labeller that answers what it is told to. */
export function labellerAnswering(outcome: LabelOutcome) {
  return { ensure: async () => outcome };
}

/** The events the node service reported. */
export class RecordedEvents implements NodeEvents {
  readonly seen: string[] = [];
  mountFailed(operation: string) {
    this.seen.push(`mountFailed:${operation}`);
  }
  labelFailed(mode: string) {
    this.seen.push(`labelFailed:${mode}`);
  }
  sourceRemoved() {
    this.seen.push("sourceRemoved");
  }
  audit(record: { operation: string; outcome: string }) {
    this.seen.push(`audit:${record.operation}:${record.outcome}`);
  }
}

export const USAGE: FileSystemUsage = {
  bsize: "4096",
  blocks: "100",
  bfree: "60",
  bavail: "50",
  files: "1000",
  ffree: "900",
};

export const SOURCE_MISSING: Source = {
  ok: false,
  code: status.UNAVAILABLE,
  problem: 'the Workload API socket directory "/run/spire/agent-sockets" does not exist',
};
