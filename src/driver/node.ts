import {
  type BigIntStatsFs,
  chmodSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  rmdirSync,
  statfsSync,
} from "node:fs";
import { dirname, join } from "node:path";
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
import type { DirectoryHandle } from "../mount/descriptors.ts";
import {
  type DirectoryState,
  directoryInode,
  type Inode,
  inspectEntry,
  isErrno,
  openConfiguredDirectory,
  sameInode,
  type TargetState,
} from "../mount/inspect.ts";
import { MountCommandError, type Mounter } from "../mount/mounter.ts";
import { findMount, MountTableTooLarge, parseMountInfo } from "../mount/mountinfo.ts";
import { entangled, type MountTree, readMountTrees, type TreeRoot } from "../mount/submounts.ts";
import {
  KUBELET_CSI_VOLUME_PATH,
  openVolumeDir,
  readVolumeData,
  TARGET_NAME,
  type VolumeData,
  type VolumeDirectory,
  VolumePathError,
} from "./kubelet.ts";
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
  /**
   * Binds the directory with every mount below it, and keeps later mounts there propagating to
   * the targets (--recursive-bind). See ../../README.md, "File systems inside the directory".
   */
  recursiveBind?: boolean;
  /** With recursiveBind: read-write mounts below the directory are bound too. */
  allowWritableSubmounts?: boolean;
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

/** The volume's identity: its volume directory's (device, inode), whatever path names it. */
function volumeKey(volume: VolumeDirectory): string {
  return `${volume.handle.dev}:${volume.handle.ino}`;
}

/** Closes the handle a directory state holds, if it holds one. */
function release(state: TargetState | undefined): void {
  if (state?.kind === "directory") state.handle.close();
}

/**
 * The CSI Node service: bind-mounts the Workload API socket directory into pods.
 *
 * Every call opens the target's volume directory once, without following links below the
 * kubelet root, and from then on works through descriptors (see ../mount/descriptors.ts): what
 * it checked is what it mounts on, unmounts and removes, whatever happens to the paths meanwhile.
 */
export class NodeService {
  private readonly locks = new KeyedMutex();
  private readonly socketDir: string;
  /** Volumes published now, by volume key, as far as this process knows (see adoptPublished). */
  private readonly published = new Set<string>();

  constructor(private readonly options: NodeServiceOptions) {
    this.socketDir = options.workloadApiSocketDir;
  }

  handlers(): ServiceHandlers<typeof Node> {
    return {
      nodePublishVolume: async (req) => {
        validatePublish(req);
        using volume = this.openVolume(req.targetPath, "publish");
        const key = volumeKey(volume);
        await this.locks.run(key, () => this.publish(req.volumeId, req.targetPath, volume));
        this.published.add(key);
        return {};
      },
      nodeUnpublishVolume: async (req) => {
        validateUnpublish(req);
        using volume = this.openVolume(req.targetPath, "unpublish");
        if (!volume) return {};
        const key = volumeKey(volume);
        await this.locks.run(key, () => this.unpublish(req.targetPath, volume));
        this.published.delete(key);
        return {};
      },
      nodeGetVolumeStats: async (req) => {
        validateVolumeStats(req);
        using volume = this.openVolume(req.volumePath, "volume stats");
        // Awaited here: `using` closes the volume directory when this function returns.
        return await this.locks.run(volumeKey(volume), () =>
          this.volumeStats(req.volumePath, volume),
        );
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
        using volume = openVolumeDir(mount.mountPoint);
        const state = inspectEntry(volume.handle, TARGET_NAME);
        if (state.kind === "directory" && sameInode(state.handle, source)) {
          this.published.add(volumeKey(volume));
        }
        release(state);
      } catch {
        // Not readable now: not counted.
      }
    }
  }

  /**
   * The target's volume directory, held open, or undefined when unpublish finds none. A missing
   * directory or a link on the way answers as each call must.
   */
  private openVolume(targetPath: string, operation: "publish" | "volume stats"): VolumeDirectory;
  private openVolume(targetPath: string, operation: "unpublish"): VolumeDirectory | undefined;
  private openVolume(
    targetPath: string,
    operation: "publish" | "unpublish" | "volume stats",
  ): VolumeDirectory | undefined {
    try {
      return openVolumeDir(targetPath);
    } catch (error) {
      if (!(error instanceof VolumePathError)) {
        throw internal(
          `${operation}: opening the volume directory of ${quote(targetPath)}: ${(error as Error).message}`,
          error,
        );
      }
      if (operation === "volume stats") throw notFound(targetPath, volumePathProblem(error));
      if (error.kind !== "missing") {
        throw new RpcError(
          status.INVALID_ARGUMENT,
          `target_path ${quote(targetPath)} ${volumePathProblem(error)}; refusing to use it`,
        );
      }
      // Never published, or already cleaned up: CSI asks unpublish for OK.
      if (operation === "unpublish") return undefined;
      throw failedPrecondition(
        `the volume directory of target_path ${quote(targetPath)} does not exist (the kubelet creates it before publishing)`,
      );
    }
  }

  private async publish(
    volumeId: string,
    targetPath: string,
    volume: VolumeDirectory,
  ): Promise<void> {
    using source = this.openSource();
    const labelProblem = this.options.labeler?.ensure();
    if (labelProblem) throw failedPrecondition(labelProblem);
    const record = await this.volumeRecord(volume, targetPath);
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
    const created = this.createTarget(volume, targetPath);
    let target: DirectoryState | undefined = this.directoryAt(volume, targetPath, "publish");
    // A publish that fails from here on keeps a mount that did happen and removes a directory
    // this call made.
    const abandon = () => {
      release(target);
      target = undefined;
      this.undoPublish(volume, created, source);
    };
    try {
      if (created) {
        // Through the handle: the directory that was opened, not whatever the name leads to now.
        const handlePath = target.handle.path;
        fs(`setting the mode of ${quote(targetPath)}`, () =>
          chmodSync(handlePath, TARGET_DIR_MODE),
        );
      }
      // A kubelet restart re-publishes every volume: a target that already shows the directory
      // is published, and mounting again would stack one more mount on it at each restart.
      if (sameInode(target.handle, source)) {
        await this.disentangle(volume, targetPath, target, source);
        return;
      }
      if (target.mountPoint) {
        // Still a mount, but of a directory that was removed and re-created since: drop the
        // stale mounts, then bind the directory as it is now.
        target = await this.unmountAll(volume, targetPath, target, source, record);
        if (sameInode(target.handle, source)) {
          await this.disentangle(volume, targetPath, target, source);
          return;
        }
      } else if (!created && !isEmptyDirectory(target.handle, targetPath)) {
        throw failedPrecondition(
          `target_path ${quote(targetPath)} is a directory with contents and not a mount point; refusing to mount over it`,
        );
      }
      let sourceTree: MountTree | undefined;
      if (this.options.recursiveBind) {
        try {
          sourceTree = await this.recursiveSource(source);
        } catch (error) {
          abandon();
          throw error;
        }
      }
      this.checkInPlace(volume, target.handle, targetPath);
      try {
        // The host-side mount stays read-write: the agent may re-create its socket in the
        // directory, and the driver may have to label it. Pods get it read-only, because
        // validation insists on a read-only volume, which the kubelet mounts read-only into the
        // pod's containers.
        await this.options.mounter.bindMount(
          { fd: source.fd, path: this.socketDir },
          { fd: target.handle.fd, path: targetPath },
          this.options.recursiveBind,
        );
      } catch (error) {
        abandon();
        this.options.onMountFailure?.("mount");
        throw commandFailed(
          `bind-mounting ${quote(this.socketDir)} at ${quote(targetPath)}`,
          error,
        );
      }
      if (!volume.holdsTarget(target.handle)) {
        // Moved while `mount` ran: the mount went wherever the directory is now. Take it back.
        await this.options.mounter.unmount({ fd: target.handle.fd, path: targetPath });
        throw failedPrecondition(
          `target_path ${quote(targetPath)} was moved while it was being published; refusing to use it`,
        );
      }
      release(target);
      target = this.directoryAt(volume, targetPath, "publish");
      if (!sameInode(target.handle, source)) {
        abandon();
        throw internal(
          `mount reported success, but target_path ${quote(targetPath)} does not show ${quote(this.socketDir)}`,
        );
      }
      if (sourceTree && sourceTree.peerGroups.length > 0) {
        await this.makeSlave(volume, targetPath, target);
      }
    } finally {
      release(target);
    }
  }

  private async unpublish(targetPath: string, volume: VolumeDirectory): Promise<void> {
    const state = fs(`unpublish: inspecting ${quote(targetPath)}`, () =>
      inspectEntry(volume.handle, TARGET_NAME),
    );
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
    const source = this.openSourceIfThere();
    try {
      release(await this.unmountAll(volume, targetPath, state, source));
    } finally {
      source?.close();
    }
    try {
      // Only the last name is looked up again, inside the volume directory held open; rmdir
      // never follows a link there.
      rmdirSync(volume.handle.entry(TARGET_NAME));
    } catch (error) {
      if (isErrno(error, "ENOENT")) return;
      if (isErrno(error, "ENOTEMPTY") || isErrno(error, "EEXIST")) {
        throw failedPrecondition(
          `target_path ${quote(targetPath)} is not a mount point and is not empty; refusing to remove it`,
        );
      }
      if (isErrno(error, "ENOTDIR")) {
        throw failedPrecondition(
          `target_path ${quote(targetPath)} was replaced by something that is not a directory; refusing to remove it`,
        );
      }
      throw internal(
        `removing target_path ${quote(targetPath)}: ${(error as Error).message}`,
        error,
      );
    }
  }

  private async volumeStats(
    volumePath: string,
    volume: VolumeDirectory,
  ): Promise<MessageInitShape<typeof NodeGetVolumeStatsResponseSchema>> {
    const state = fs(`volume stats: inspecting ${quote(volumePath)}`, () =>
      inspectEntry(volume.handle, TARGET_NAME),
    );
    try {
      switch (state.kind) {
        case "missing":
          throw notFound(volumePath, "it does not exist");
        case "symlink":
          throw notFound(volumePath, "it is a symbolic link");
        case "not-directory":
          throw notFound(volumePath, "it is not a directory");
      }
      const driverName = (await this.volumeRecord(volume, volumePath))?.driverName;
      if (driverName !== undefined && driverName !== this.options.pluginName) {
        throw notFound(volumePath, `it is a volume of driver ${quote(driverName)}`);
      }
      return {
        usage: usageOf(state.handle, volumePath),
        volumeCondition: this.condition(volumePath, state),
      };
    } finally {
      release(state);
    }
  }

  private condition(volumePath: string, state: DirectoryState): Condition {
    const abnormal = (message: string): Condition => ({ abnormal: true, message });
    if (!state.mountPoint) {
      return abnormal(
        `${volumePath} is not a mount point: the Workload API directory is not mounted`,
      );
    }
    const source = this.openSourceIfThere();
    try {
      const sourceProblem = this.sourceProblem(source);
      if (sourceProblem || !source) return abnormal(sourceProblem ?? "no Workload API directory");
      if (!sameInode(state.handle, source)) {
        return abnormal(
          `${volumePath} no longer shows the Workload API directory ${this.socketDir} (it was removed or replaced after the volume was published); publishing the volume again repairs it`,
        );
      }
    } finally {
      source?.close();
    }
    try {
      readdirSync(state.handle.path);
    } catch (error) {
      return abnormal(`cannot list ${volumePath}: ${(error as Error).message}`);
    }
    return { abnormal: false, message: `the Workload API directory ${this.socketDir} is mounted` };
  }

  /** The kubelet's record in the volume directory, if it left one that can be read. */
  private async volumeRecord(
    volume: VolumeDirectory,
    targetPath: string,
  ): Promise<VolumeData | undefined> {
    try {
      return await readVolumeData(volume.handle);
    } catch (error) {
      throw internal(
        `reading the kubelet's record beside ${quote(targetPath)}: ${(error as Error).message}`,
        error,
      );
    }
  }

  /** The Workload API directory as the driver sees it now, held open; undefined when missing. */
  private openSourceIfThere(): DirectoryHandle | undefined {
    return fs(`inspecting the Workload API directory ${quote(this.socketDir)}`, () =>
      openConfiguredDirectory(this.socketDir),
    );
  }

  /** The Workload API directory, held open, or UNAVAILABLE saying why it cannot be published. */
  private openSource(): DirectoryHandle {
    const source = this.openSourceIfThere();
    const problem = this.sourceProblem(source);
    if (problem || !source) {
      source?.close();
      throw new RpcError(status.UNAVAILABLE, problem ?? "no Workload API directory");
    }
    return source;
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

  /** Refuses to go on when the target is no longer where the walk found it. */
  private checkInPlace(volume: VolumeDirectory, target: DirectoryHandle, targetPath: string): void {
    const inPlace = fs(`locating ${quote(targetPath)}`, () => volume.holdsTarget(target));
    if (!inPlace) {
      throw failedPrecondition(
        `target_path ${quote(targetPath)} was moved or removed while in use; refusing to use it`,
      );
    }
  }

  /** Creates the target directory (the kubelet creates only its parent); true if it did. */
  private createTarget(volume: VolumeDirectory, targetPath: string): boolean {
    try {
      mkdirSync(volume.handle.entry(TARGET_NAME), { mode: TARGET_DIR_MODE });
    } catch (error) {
      if (isErrno(error, "EEXIST")) return false;
      throw internal(
        `creating target_path ${quote(targetPath)}: ${(error as Error).message}`,
        error,
      );
    }
    return true;
  }

  private directoryAt(
    volume: VolumeDirectory,
    targetPath: string,
    operation: string,
  ): DirectoryState {
    const state = fs(`${operation}: inspecting ${quote(targetPath)}`, () =>
      inspectEntry(volume.handle, TARGET_NAME),
    );
    switch (state.kind) {
      case "directory":
        return state;
      case "symlink":
        // A symbolic link could redirect the bind mount anywhere on the node.
        throw failedPrecondition(
          `target_path ${quote(targetPath)} is a symbolic link; refusing to use it`,
        );
      case "not-directory":
        throw failedPrecondition(`target_path ${quote(targetPath)} exists and is not a directory`);
      case "missing":
        throw internal(`${operation}: target_path ${quote(targetPath)} disappeared while in use`);
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
    target: DirectoryHandle,
    source: Inode | undefined,
    record: VolumeData | undefined,
  ): boolean {
    if (source && sameInode(target, source)) return true;
    const driverName = record?.driverName;
    if (driverName !== undefined) return driverName === this.options.pluginName;
    const device =
      source?.dev ??
      fs(`inspecting ${quote(dirname(this.socketDir))}`, () =>
        directoryInode(dirname(this.socketDir)),
      )?.dev;
    return target.nlink === 0 && target.dev === device;
  }

  /**
   * Unmounts the target for as long as it is a mount point of this driver's. Takes the state's
   * handle and returns the final state, whose handle the caller closes.
   */
  private async unmountAll(
    volume: VolumeDirectory,
    targetPath: string,
    state: DirectoryState,
    source: DirectoryHandle | undefined,
    knownRecord?: VolumeData,
  ): Promise<DirectoryState> {
    let current = state;
    let record = knownRecord;
    let recordRead = knownRecord !== undefined;
    try {
      while (current.mountPoint) {
        if (!(source && sameInode(current.handle, source)) && !recordRead) {
          record = await this.volumeRecord(volume, targetPath);
          recordRead = true;
        }
        if (!this.ownsMount(current.handle, source, record)) {
          throw failedPrecondition(
            `target_path ${quote(targetPath)} is a mount point (${describeMount(current.handle.mountId)}) that is not this driver's; refusing to unmount it`,
          );
        }
        // A stale bind of a re-created directory can still share a peer group with it too.
        if (source) await this.disentangle(volume, targetPath, current, source);
        // `umount` of the handle removes the topmost mount there: if another was stacked on the
        // one checked meanwhile, check that one first. What remains is the moment it takes to
        // start `umount`.
        const top = this.directoryAt(volume, targetPath, "unmount");
        if (top.handle.mountId !== current.handle.mountId) {
          release(current);
          current = top;
          continue;
        }
        release(top);
        const { handle } = current;
        try {
          // The mounter may close the handle first: a descriptor on the mount keeps it busy.
          await this.options.mounter.unmount({
            fd: handle.fd,
            path: targetPath,
            close: () => handle.close(),
          });
        } catch (error) {
          this.options.onMountFailure?.("umount");
          throw commandFailed(`unmounting ${quote(targetPath)}`, error);
        }
        const previousMountId = current.handle.mountId;
        release(current);
        current = this.directoryAt(volume, targetPath, "unmount");
        if (current.mountPoint && current.handle.mountId === previousMountId) {
          throw internal(
            `umount reported success, but ${quote(targetPath)} is still the same mount`,
          );
        }
      }
      return current;
    } catch (error) {
      release(current);
      throw error;
    }
  }

  /** The mount trees at these roots, from the mount table (only with --recursive-bind). */
  private async mountTrees(...roots: TreeRoot[]): Promise<MountTree[]> {
    try {
      return await readMountTrees(roots);
    } catch (error) {
      if (error instanceof MountTableTooLarge) throw failedPrecondition(error.message);
      throw internal(`reading /proc/self/mountinfo: ${(error as Error).message}`, error);
    }
  }

  /**
   * The Workload API directory's mount tree, or FAILED_PRECONDITION naming the read-write mounts
   * in it: a pod's readOnly covers only the top of its volume, so a read-write mount below would
   * reach the pod writable.
   */
  private async recursiveSource(source: DirectoryHandle): Promise<MountTree> {
    const [tree = { peerGroups: [], writable: [] }] = await this.mountTrees(treeRoot(source));
    if (tree.writable.length > 0 && !this.options.allowWritableSubmounts) {
      throw failedPrecondition(
        `the Workload API directory ${quote(this.socketDir)} holds read-write mounts (${tree.writable.map(quote).join(", ")}); with --recursive-bind pods would get them writable, since a pod's readOnly covers only the top of the volume: mount them read-only, or start the driver with --allow-writable-submounts`,
      );
    }
    return tree;
  }

  /**
   * With --recursive-bind: a target still in a peer group of the Workload API directory's tree
   * (a publish that stopped between its bind and makeSlave) is made a slave before anything
   * else. Mounts at such a target propagate into the agent's directory, and unmounting it would
   * unmount the agent's own file systems.
   */
  private async disentangle(
    volume: VolumeDirectory,
    targetPath: string,
    target: DirectoryState,
    source: DirectoryHandle,
  ): Promise<void> {
    if (!this.options.recursiveBind || !target.mountPoint) return;
    const [sourceTree, targetTree] = await this.mountTrees(treeRoot(source), {
      mountId: target.handle.mountId,
      location: join(volume.location, TARGET_NAME),
    });
    if (sourceTree && targetTree && entangled(sourceTree, targetTree))
      await this.makeSlave(volume, targetPath, target);
  }

  /**
   * Makes the recursive bind at the target a slave of the Workload API directory's peer groups:
   * mounts made in the directory later still reach the target, and nothing mounted at the
   * target reaches the directory. The top stays shared (in a group of its own), so the copies
   * the kubelet root's propagation made of it, and the pods' slave copies, follow it.
   */
  private async makeSlave(
    volume: VolumeDirectory,
    targetPath: string,
    target: DirectoryState,
  ): Promise<void> {
    this.checkInPlace(volume, target.handle, targetPath);
    try {
      await this.options.mounter.makeSlave({ fd: target.handle.fd, path: targetPath });
    } catch (error) {
      // The mount stays: unmounting it while it is a peer of the directory's mounts would
      // unmount those too. A retried publish or unpublish makes it a slave first.
      this.options.onMountFailure?.("mount");
      throw commandFailed(`making the mounts at ${quote(targetPath)} slaves`, error);
    }
  }

  /** After a failed mount: keep a mount that did happen, remove a directory this call made. */
  private undoPublish(volume: VolumeDirectory, created: boolean, source: Inode): void {
    if (!created) return;
    let state: TargetState | undefined;
    try {
      state = inspectEntry(volume.handle, TARGET_NAME);
      if (state.kind === "directory" && !state.mountPoint && !sameInode(state.handle, source)) {
        rmdirSync(volume.handle.entry(TARGET_NAME));
      }
    } catch {
      // The kubelet removes the directory after a final error anyway.
    } finally {
      release(state);
    }
  }
}

function notFound(volumePath: string, why: string): RpcError {
  return new RpcError(
    status.NOT_FOUND,
    `no volume is published at volume_path ${quote(volumePath)}: ${why}`,
  );
}

/** What stopped the walk to a volume directory, for a message about the target. */
function volumePathProblem(error: VolumePathError): string {
  switch (error.kind) {
    case "missing":
      return `it does not exist (${quote(error.path)} is missing)`;
    case "symlink":
      return `passes through a symbolic link below the kubelet root (${quote(error.path)})`;
    case "not-directory":
      return `passes through ${quote(error.path)}, which is not a directory`;
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

function treeRoot(directory: DirectoryHandle): TreeRoot {
  return { mountId: directory.mountId, location: directory.location() };
}

function isEmptyDirectory(directory: DirectoryHandle, path: string): boolean {
  return fs(`listing ${quote(path)}`, () => readdirSync(directory.path)).length === 0;
}

/** Bytes and inodes of the file system under the directory; older kubelets require both. */
function usageOf(directory: DirectoryHandle, path: string) {
  const stats: BigIntStatsFs = fs(`statfs ${quote(path)}`, () =>
    statfsSync(directory.path, { bigint: true }),
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
