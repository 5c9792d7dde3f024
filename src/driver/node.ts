import {
  type BigIntStatsFs,
  chmodSync,
  mkdirSync,
  readdirSync,
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
} from "../mount/inspect.ts";
import { MountCommandError, type Mounter } from "../mount/mounter.ts";
import { findMount } from "../mount/mountinfo.ts";
import { KeyedMutex } from "./locks.ts";
import { quote, validatePublish, validateUnpublish, validateVolumeStats } from "./validate.ts";

export interface NodeServiceOptions {
  nodeId: string;
  workloadApiSocketDir: string;
  mounter: Mounter;
}

// The kubelet creates <volume-name>/ with 0750; the mount directory gets the same.
const TARGET_DIR_MODE = 0o750;
// More mounts stacked on one target than any real node has shown; a bound on the unmount loop.
const MAX_STACKED_MOUNTS = 64;

function failedPrecondition(message: string): RpcError {
  return new RpcError(status.FAILED_PRECONDITION, message);
}

function internal(message: string, cause?: unknown): RpcError {
  return new RpcError(status.INTERNAL, message, { cause });
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

  constructor(private readonly options: NodeServiceOptions) {
    this.socketDir = options.workloadApiSocketDir;
  }

  handlers(): ServiceHandlers<typeof Node> {
    return {
      nodePublishVolume: async (req) => {
        validatePublish(req);
        await this.locks.run(req.targetPath, () => this.publish(req.targetPath));
        return {};
      },
      nodeUnpublishVolume: async (req) => {
        validateUnpublish(req);
        await this.locks.run(req.targetPath, () => this.unpublish(req.targetPath));
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

  private async publish(targetPath: string): Promise<void> {
    const source = directoryInode(this.socketDir);
    if (!source) {
      throw new RpcError(
        status.UNAVAILABLE,
        `the Workload API socket directory ${quote(this.socketDir)} does not exist (is the SPIFFE agent running?)`,
      );
    }
    const created = this.createTarget(targetPath);
    let target = this.directoryAt(targetPath, "target_path");
    // A kubelet restart re-publishes every volume: a target that already shows the directory is
    // published, and mounting again would stack one more mount on it at each restart.
    if (this.shows(target, source)) return;
    if (target.mountPoint) {
      // Still a mount, but of a directory that was removed and re-created since: drop the stale
      // mounts, then bind the directory as it is now.
      target = await this.unmountAll(targetPath, target, source);
      if (this.shows(target, source)) return;
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
      throw commandFailed(`bind-mounting ${quote(this.socketDir)} at ${quote(targetPath)}`, error);
    }
    target = this.directoryAt(targetPath, "target_path");
    if (!this.shows(target, source)) {
      throw internal(
        `mount reported success, but target_path ${quote(targetPath)} does not show ${quote(this.socketDir)}`,
      );
    }
  }

  private async unpublish(targetPath: string): Promise<void> {
    const state = inspectTarget(targetPath);
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
    // Every mount goes, including duplicates stacked by older drivers. After a node reboot
    // there is none, and the directory is simply removed.
    await this.unmountAll(targetPath, state, directoryInode(this.socketDir));
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
    const state = inspectTarget(volumePath);
    if (state.kind !== "directory") {
      const what = {
        missing: "it does not exist",
        symlink: "it is a symbolic link",
        "not-directory": "it is not a directory",
      }[state.kind];
      throw new RpcError(
        status.NOT_FOUND,
        `no volume is published at volume_path ${quote(volumePath)}: ${what}`,
      );
    }
    return {
      usage: usageOf(volumePath),
      volumeCondition: this.condition(volumePath, state),
    };
  }

  private condition(volumePath: string, state: DirectoryState) {
    const abnormal = (message: string) => ({ abnormal: true, message });
    if (!state.mountPoint) {
      return abnormal(
        `${volumePath} is not a mount point: the Workload API directory is not mounted`,
      );
    }
    const source = directoryInode(this.socketDir);
    if (!source) {
      return abnormal(`the Workload API socket directory ${this.socketDir} does not exist`);
    }
    if (!this.shows(state, source)) {
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

  /** Creates the target directory (the kubelet creates only its parent); true if it did. */
  private createTarget(targetPath: string): boolean {
    try {
      mkdirSync(targetPath, { mode: TARGET_DIR_MODE });
      chmodSync(targetPath, TARGET_DIR_MODE);
      return true;
    } catch (error) {
      if (isErrno(error, "EEXIST")) return false;
      if (isErrno(error, "ENOENT")) {
        throw failedPrecondition(
          `the parent directory of target_path ${quote(targetPath)} does not exist (the kubelet creates it before publishing)`,
        );
      }
      throw internal(
        `creating target_path ${quote(targetPath)}: ${(error as Error).message}`,
        error,
      );
    }
  }

  private directoryAt(path: string, field: string): DirectoryState {
    const state = inspectTarget(path);
    switch (state.kind) {
      case "directory":
        return state;
      case "symlink":
        // A symbolic link could redirect the bind mount anywhere on the node.
        throw failedPrecondition(`${field} ${quote(path)} is a symbolic link; refusing to use it`);
      case "not-directory":
        throw failedPrecondition(`${field} ${quote(path)} exists and is not a directory`);
      case "missing":
        throw internal(`${field} ${quote(path)} disappeared while it was being published`);
    }
  }

  private shows(target: DirectoryState, source: Inode): boolean {
    return sameInode(target, source);
  }

  /**
   * Whether a mount at a target is one this driver makes: a bind of the Workload API directory,
   * as it is now or as it was before being removed (an unlinked directory on the same device).
   * Anything else mounted there was not made by this driver and is left alone.
   */
  private isOwnMount(target: DirectoryState, source: Inode | undefined): boolean {
    if (source) {
      return sameInode(target, source) || (target.nlink === 0 && target.dev === source.dev);
    }
    const parent = directoryInode(dirname(this.socketDir));
    return target.nlink === 0 && parent !== undefined && target.dev === parent.dev;
  }

  /** Unmounts the target for as long as it is a mount point of this driver's. */
  private async unmountAll(
    targetPath: string,
    state: DirectoryState,
    source: Inode | undefined,
  ): Promise<DirectoryState> {
    let current = state;
    for (let unmounted = 0; current.mountPoint; unmounted++) {
      if (!this.isOwnMount(current, source)) {
        throw failedPrecondition(
          `target_path ${quote(targetPath)} is a mount point (${describeMount(current.mountId)}) that is not a bind of the Workload API directory ${quote(this.socketDir)}; refusing to unmount it`,
        );
      }
      if (unmounted === MAX_STACKED_MOUNTS) {
        throw internal(
          `target_path ${quote(targetPath)} is still a mount point after ${MAX_STACKED_MOUNTS} unmounts`,
        );
      }
      try {
        await this.options.mounter.unmount(targetPath);
      } catch (error) {
        throw commandFailed(`unmounting ${quote(targetPath)}`, error);
      }
      current = this.directoryAt(targetPath, "target_path");
    }
    return current;
  }

  /** After a failed mount: keep a mount that did happen, remove a directory this call made. */
  private undoPublish(targetPath: string, created: boolean, source: Inode): void {
    const state = inspectTarget(targetPath);
    if (!created || state.kind !== "directory" || state.mountPoint || this.shows(state, source)) {
      return;
    }
    try {
      rmdirSync(targetPath);
    } catch {
      // The kubelet removes the directory after a final error anyway.
    }
  }
}

/** What is mounted, for an error message: the one place the mount table is read. */
function describeMount(mountId: number): string {
  const mount = findMount(mountId);
  return mount
    ? `${mount.fsType} ${mount.source}, root ${mount.root}, device ${mount.device}`
    : `mount id ${mountId}`;
}

function isEmptyDirectory(path: string): boolean {
  return readdirSync(path).length === 0;
}

/** Bytes and inodes of the file system under the path; older kubelets require both. */
function usageOf(path: string) {
  let stats: BigIntStatsFs;
  try {
    stats = statfsSync(path, { bigint: true });
  } catch (error) {
    throw internal(`statfs ${quote(path)}: ${(error as Error).message}`, error);
  }
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
