import {
  type BigIntStatsFs,
  chmodSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  rmdirSync,
  statfsSync,
} from "node:fs";
import { dirname } from "node:path";
import type { MessageInitShape } from "@bufbuild/protobuf";
import { status } from "@grpc/grpc-js";
import {
  type Node,
  NodeServiceCapability_RPC_Type as NodeCapability,
  type NodeGetVolumeStatsResponseSchema,
  VolumeUsage_Unit as UsageUnit,
  type VolumeConditionSchema,
} from "../gen/csi/v1/csi_pb.ts";
import type { ServiceHandlers } from "../grpc/service.ts";
import { RpcError } from "../grpc/status.ts";
import {
  type DirectoryState,
  directoryInode,
  type Inode,
  inspectTarget,
  isErrno,
  sameInode,
  type TargetState,
} from "../mount/inspect.ts";
import { MountCommandError, type Mounter } from "../mount/mounter.ts";
import { findMount, parseMountInfo } from "../mount/mountinfo.ts";
import { KUBELET_CSI_VOLUME_PATH, readVolumeData, redirectedVolumeDir } from "./kubelet.ts";
import { KeyedMutex } from "./locks.ts";
import { quote, validatePublish, validateUnpublish, validateVolumeStats } from "./validate.ts";

export interface NodeServiceOptions {
  nodeId: string;
  pluginName: string;
  workloadApiSocketDir: string;
  mounter: Mounter;
  /** Told of every `mount` or `umount` that failed (for metrics). */
  onMountFailure?: (operation: "mount" | "umount") => void;
  /** Makes the Workload API directory usable by pods (SELinux labels); says why it cannot. */
  labeler?: { ensure(): string | undefined };
}

// The kubelet creates <volume-name>/ with 0750; the mount directory gets the same.
const TARGET_DIR_MODE = 0o750;

type Condition = MessageInitShape<typeof VolumeConditionSchema>;

function failedPrecondition(message: string): RpcError {
  return new RpcError(status.FAILED_PRECONDITION, message);
}

function internal(message: string, cause?: unknown): RpcError {
  return new RpcError(status.INTERNAL, message, { cause });
}

/** Runs a file-system call; a failure becomes INTERNAL saying what was done and to which path. */
function fs<T>(what: string, call: () => T): T {
  try {
    return call();
  } catch (error) {
    if (error instanceof RpcError) throw error;
    throw internal(`${what}: ${(error as Error).message}`, error);
  }
}

/** A failed `mount`/`umount`: DEADLINE_EXCEEDED (which the kubelet retries) when it hung. */
function commandFailed(what: string, error: unknown): RpcError {
  if (error instanceof MountCommandError) {
    return new RpcError(
      error.timedOut ? status.DEADLINE_EXCEEDED : status.INTERNAL,
      `${what}: ${error.message}`,
      { cause: error },
    );
  }
  return internal(`${what}: ${(error as Error).message}`, error);
}

/** The CSI Node service: bind-mounts the Workload API socket directory into pods. */
export class NodeService {
  private readonly locks = new KeyedMutex();
  private readonly socketDir: string;
  /** Targets published now, as far as this process knows (see adoptPublished). */
  private readonly published = new Set<string>();

  constructor(private readonly options: NodeServiceOptions) {
    this.socketDir = options.workloadApiSocketDir;
  }

  handlers(): ServiceHandlers<typeof Node> {
    return {
      nodePublishVolume: async (req) => {
        validatePublish(req);
        await this.locks.run(req.targetPath, () => this.publish(req.volumeId, req.targetPath));
        this.published.add(req.targetPath);
        return {};
      },
      nodeUnpublishVolume: async (req) => {
        validateUnpublish(req);
        await this.locks.run(req.targetPath, () => this.unpublish(req.targetPath));
        this.published.delete(req.targetPath);
        return {};
      },
      nodeGetVolumeStats: async (req) => {
        validateVolumeStats(req);
        return this.locks.run(req.volumePath, async () => this.volumeStats(req.volumePath));
      },
      nodeGetCapabilities: async () => ({
        capabilities: [NodeCapability.VOLUME_CONDITION, NodeCapability.GET_VOLUME_STATS].map(
          (type) => ({ type: { case: "rpc" as const, value: { type } } }),
        ),
      }),
      // No volume limit: every pod on the node may have the volume.
      nodeGetInfo: async () => ({ nodeId: this.options.nodeId, maxVolumesPerNode: 0n }),
    };
  }

  /** How many volumes are published now. */
  get publishedVolumes(): number {
    return this.published.size;
  }

  /**
   * Learns which volumes were published before this process started, from one read of the mount
   * table at start-up (never on a call's path): kubelet CSI volume paths that show the Workload
   * API directory.
   */
  adoptPublished(): void {
    const source = directoryInode(this.socketDir);
    if (!source) return;
    for (const mount of parseMountInfo(readFileSync("/proc/self/mountinfo", "utf8"))) {
      if (!KUBELET_CSI_VOLUME_PATH.test(mount.mountPoint)) continue;
      try {
        const state = inspectTarget(mount.mountPoint);
        if (state.kind === "directory" && sameInode(state, source)) {
          this.published.add(mount.mountPoint);
        }
      } catch {
        // Not readable now: not counted.
      }
    }
  }

  private async publish(volumeId: string, targetPath: string): Promise<void> {
    const source = this.source();
    const sourceProblem = this.sourceProblem(source);
    if (sourceProblem || !source) {
      throw new RpcError(status.UNAVAILABLE, sourceProblem ?? "no Workload API directory");
    }
    const labelProblem = this.options.labeler?.ensure();
    if (labelProblem) throw failedPrecondition(labelProblem);
    this.checkVolumeDir(targetPath, "publish");
    const record = this.volumeRecord(targetPath);
    if (record?.driverName !== undefined && record.driverName !== this.options.pluginName) {
      throw failedPrecondition(
        `target_path ${quote(targetPath)} belongs to a volume of driver ${quote(record.driverName)}`,
      );
    }
    if (record?.volumeHandle !== undefined && record.volumeHandle !== volumeId) {
      throw new RpcError(
        status.ALREADY_EXISTS,
        `target_path ${quote(targetPath)} belongs to volume ${quote(record.volumeHandle)}, not ${quote(volumeId)}`,
      );
    }
    const created = this.createTarget(targetPath);
    let target = this.directoryAt(targetPath, "publish");
    // A kubelet restart re-publishes every volume: a target that already shows the directory is
    // published, and mounting again would stack one more mount on it at each restart.
    if (sameInode(target, source)) return;
    if (target.mountPoint) {
      // Still a mount, but of a directory that was removed and re-created since: drop the stale
      // mounts, then bind the directory as it is now.
      target = await this.unmountAll(targetPath, target, source);
      if (sameInode(target, source)) return;
    } else if (!created && !isEmptyDirectory(targetPath)) {
      throw failedPrecondition(
        `target_path ${quote(targetPath)} is a directory with contents and not a mount point; refusing to mount over it`,
      );
    }
    try {
      // The mount is read-write on the host on purpose: the container runtime may have to
      // relabel it (SELinux). The pod must still never write to the agent's directory, which
      // is why validation insists on a read-only volume: the kubelet then mounts it read-only
      // into the pod's containers.
      await this.options.mounter.bindMount(this.socketDir, targetPath);
    } catch (error) {
      this.undoPublish(targetPath, created, source);
      this.options.onMountFailure?.("mount");
      throw commandFailed(`bind-mounting ${quote(this.socketDir)} at ${quote(targetPath)}`, error);
    }
    target = this.directoryAt(targetPath, "publish");
    if (!sameInode(target, source)) {
      this.undoPublish(targetPath, created, source);
      throw internal(
        `mount reported success, but target_path ${quote(targetPath)} does not show ${quote(this.socketDir)}`,
      );
    }
  }

  private async unpublish(targetPath: string): Promise<void> {
    const state = this.inspect(targetPath, "unpublish");
    switch (state.kind) {
      // Never published, or already unpublished: CSI asks for OK.
      case "missing":
        return;
      case "symlink":
        throw failedPrecondition(
          `target_path ${quote(targetPath)} is a symbolic link; refusing to unmount or remove it`,
        );
      case "not-directory":
        throw failedPrecondition(
          `target_path ${quote(targetPath)} is not a directory; refusing to remove it`,
        );
    }
    this.checkVolumeDir(targetPath, "unpublish");
    // Every mount goes, including duplicates stacked by older drivers. After a node reboot
    // there is none, and the directory is simply removed.
    await this.unmountAll(targetPath, state, this.source());
    try {
      rmdirSync(targetPath);
    } catch (error) {
      if (isErrno(error, "ENOENT")) return;
      if (isErrno(error, "ENOTEMPTY") || isErrno(error, "EEXIST")) {
        throw failedPrecondition(
          `target_path ${quote(targetPath)} is not a mount point and is not empty; refusing to remove it`,
        );
      }
      throw internal(
        `removing target_path ${quote(targetPath)}: ${(error as Error).message}`,
        error,
      );
    }
  }

  private volumeStats(
    volumePath: string,
  ): MessageInitShape<typeof NodeGetVolumeStatsResponseSchema> {
    const state = this.inspect(volumePath, "volume stats");
    const notFound = (why: string) =>
      new RpcError(
        status.NOT_FOUND,
        `no volume is published at volume_path ${quote(volumePath)}: ${why}`,
      );
    switch (state.kind) {
      case "missing":
        throw notFound("it does not exist");
      case "symlink":
        throw notFound("it is a symbolic link");
      case "not-directory":
        throw notFound("it is not a directory");
    }
    const redirected = fs(`resolving ${quote(volumePath)}`, () => redirectedVolumeDir(volumePath));
    if (redirected) throw notFound(`it passes through a symbolic link to ${quote(redirected)}`);
    const driverName = this.recordedDriver(volumePath);
    if (driverName !== undefined && driverName !== this.options.pluginName) {
      throw notFound(`it is a volume of driver ${quote(driverName)}`);
    }
    return { usage: usageOf(volumePath), volumeCondition: this.condition(volumePath, state) };
  }

  private condition(volumePath: string, state: DirectoryState): Condition {
    const abnormal = (message: string): Condition => ({ abnormal: true, message });
    if (!state.mountPoint) {
      return abnormal(
        `${volumePath} is not a mount point: the Workload API directory is not mounted`,
      );
    }
    const source = this.source();
    const sourceProblem = this.sourceProblem(source);
    if (sourceProblem || !source) return abnormal(sourceProblem ?? "no Workload API directory");
    if (!sameInode(state, source)) {
      return abnormal(
        `${volumePath} no longer shows the Workload API directory ${this.socketDir} (it was removed or replaced after the volume was published); publishing the volume again repairs it`,
      );
    }
    try {
      readdirSync(volumePath);
    } catch (error) {
      return abnormal(`cannot list ${volumePath}: ${(error as Error).message}`);
    }
    return { abnormal: false, message: `the Workload API directory ${this.socketDir} is mounted` };
  }

  /** The driver the kubelet recorded for the volume at the target, if it recorded one. */
  private recordedDriver(targetPath: string): string | undefined {
    return this.volumeRecord(targetPath)?.driverName;
  }

  private volumeRecord(targetPath: string) {
    return fs(`reading the kubelet's record beside ${quote(targetPath)}`, () =>
      readVolumeData(targetPath),
    );
  }

  /** The Workload API directory as the driver sees it now; undefined when it is missing. */
  private source(): Inode | undefined {
    return fs(`inspecting the Workload API directory ${quote(this.socketDir)}`, () =>
      directoryInode(this.socketDir),
    );
  }

  /** Why the Workload API directory cannot be published now, or undefined when it can. */
  private sourceProblem(source: Inode | undefined): string | undefined {
    if (!source) {
      return `the Workload API socket directory ${quote(this.socketDir)} does not exist (is the SPIFFE agent running?)`;
    }
    // The driver's own view of the directory is a removed one: in a container, the host
    // directory behind a hostPath mount was deleted and re-created after the driver started.
    // Binding it would give pods an empty, dead directory.
    if (source.nlink === 0) {
      return `the Workload API socket directory ${quote(this.socketDir)} was removed after the driver started, and the driver still sees the removed one; restart the driver (and mount the directory's parent into its container, so that this cannot happen)`;
    }
    return undefined;
  }

  /** Refuses a target whose volume directory is missing, or is reached through a symbolic link. */
  private checkVolumeDir(targetPath: string, operation: string): void {
    let redirected: string | undefined;
    try {
      redirected = redirectedVolumeDir(targetPath);
    } catch (error) {
      if (isErrno(error, "ENOENT")) {
        throw failedPrecondition(
          `the volume directory of target_path ${quote(targetPath)} does not exist (the kubelet creates it before publishing)`,
        );
      }
      throw internal(
        `${operation}: resolving ${quote(targetPath)}: ${(error as Error).message}`,
        error,
      );
    }
    if (redirected) {
      throw new RpcError(
        status.INVALID_ARGUMENT,
        `target_path ${quote(targetPath)} passes through a symbolic link below the kubelet root (it leads to ${quote(redirected)}); refusing to use it`,
      );
    }
  }

  /** Creates the target directory (the kubelet creates only its parent); true if it did. */
  private createTarget(targetPath: string): boolean {
    try {
      mkdirSync(targetPath, { mode: TARGET_DIR_MODE });
    } catch (error) {
      if (isErrno(error, "EEXIST")) return false;
      throw internal(
        `creating target_path ${quote(targetPath)}: ${(error as Error).message}`,
        error,
      );
    }
    fs(`setting the mode of ${quote(targetPath)}`, () => chmodSync(targetPath, TARGET_DIR_MODE));
    return true;
  }

  private inspect(path: string, operation: string): TargetState {
    return fs(`${operation}: inspecting ${quote(path)}`, () => inspectTarget(path));
  }

  private directoryAt(path: string, operation: string): DirectoryState {
    const state = this.inspect(path, operation);
    switch (state.kind) {
      case "directory":
        return state;
      case "symlink":
        // A symbolic link could redirect the bind mount anywhere on the node.
        throw failedPrecondition(
          `target_path ${quote(path)} is a symbolic link; refusing to use it`,
        );
      case "not-directory":
        throw failedPrecondition(`target_path ${quote(path)} exists and is not a directory`);
      case "missing":
        throw internal(`${operation}: target_path ${quote(path)} disappeared while in use`);
    }
  }

  /**
   * Whether a mount at the target may be removed. The fast answer: it shows the Workload API
   * directory. Otherwise the kubelet's record beside the target says whose volume this is: this
   * driver's volumes may hold a stale bind of a directory since replaced (whatever file system it
   * was on), and everything at them is this driver's to remove. Without a record, only a bind of
   * a removed directory on the Workload API directory's device is taken for a stale one of ours.
   */
  private ownsMount(
    targetPath: string,
    target: DirectoryState,
    source: Inode | undefined,
  ): boolean {
    if (source && sameInode(target, source)) return true;
    const driverName = this.recordedDriver(targetPath);
    if (driverName !== undefined) return driverName === this.options.pluginName;
    const device =
      source?.dev ??
      fs(`inspecting ${quote(dirname(this.socketDir))}`, () =>
        directoryInode(dirname(this.socketDir)),
      )?.dev;
    return target.nlink === 0 && target.dev === device;
  }

  /** Unmounts the target for as long as it is a mount point of this driver's. */
  private async unmountAll(
    targetPath: string,
    state: DirectoryState,
    source: Inode | undefined,
  ): Promise<DirectoryState> {
    let current = state;
    while (current.mountPoint) {
      if (!this.ownsMount(targetPath, current, source)) {
        throw failedPrecondition(
          `target_path ${quote(targetPath)} is a mount point (${describeMount(current.mountId)}) that is not this driver's; refusing to unmount it`,
        );
      }
      try {
        await this.options.mounter.unmount(targetPath);
      } catch (error) {
        this.options.onMountFailure?.("umount");
        throw commandFailed(`unmounting ${quote(targetPath)}`, error);
      }
      const previous = current;
      current = this.directoryAt(targetPath, "unmount");
      if (current.mountPoint && current.mountId === previous.mountId) {
        throw internal(`umount reported success, but ${quote(targetPath)} is still the same mount`);
      }
    }
    return current;
  }

  /** After a failed mount: keep a mount that did happen, remove a directory this call made. */
  private undoPublish(targetPath: string, created: boolean, source: Inode): void {
    if (!created) return;
    try {
      const state = inspectTarget(targetPath);
      if (state.kind === "directory" && !state.mountPoint && !sameInode(state, source)) {
        rmdirSync(targetPath);
      }
    } catch {
      // The kubelet removes the directory after a final error anyway.
    }
  }
}

/** What is mounted, for an error message: the one place the mount table is read. */
function describeMount(mountId: number): string {
  try {
    const mount = findMount(mountId);
    if (mount) return `${mount.fsType} ${mount.source}, root ${mount.root}, device ${mount.device}`;
  } catch {
    // Only an error message is at stake.
  }
  return `mount id ${mountId}`;
}

function isEmptyDirectory(path: string): boolean {
  return fs(`listing ${quote(path)}`, () => readdirSync(path)).length === 0;
}

/** Bytes and inodes of the file system under the path; older kubelets require both. */
function usageOf(path: string) {
  const stats: BigIntStatsFs = fs(`statfs ${quote(path)}`, () =>
    statfsSync(path, { bigint: true }),
  );
  return [
    {
      unit: UsageUnit.BYTES,
      total: stats.blocks * stats.bsize,
      available: stats.bavail * stats.bsize,
      used: (stats.blocks - stats.bfree) * stats.bsize,
    },
    {
      unit: UsageUnit.INODES,
      total: stats.files,
      available: stats.ffree,
      used: stats.files - stats.ffree,
    },
  ];
}
