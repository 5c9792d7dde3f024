import { chmodSync, mkdirSync, readdirSync, rmdirSync } from "node:fs";
import { join } from "node:path";
import { status } from "@grpc/grpc-js";
import type { DirectoryHandle } from "../linux/descriptors.ts";
import { isErrno } from "../linux/errno.ts";
import {
  type DirectoryState,
  inspectEntry,
  sameInode,
  type TargetState,
} from "../linux/inspect.ts";
import type { MountTree } from "../linux/submounts.ts";
import { RpcError } from "../rpc/status.ts";
import { commandFailed, failedPrecondition, fs, internal, quote, unavailable } from "./errors.ts";
import { TARGET_NAME, type VolumeData, type VolumeDirectory } from "./kubelet.ts";
import type { NodeServiceOptions } from "./node.ts";
import { disentangle, makeSlave, mountTrees, recursiveSource } from "./recursive.ts";
import { openSource } from "./source.ts";
import { checkInPlace, directoryAt, release, volumeRecord } from "./target.ts";
import { unmountAll } from "./unpublish.ts";

// The kubelet creates <volume-name>/ with 0750; the mount directory gets the same.
const TARGET_DIR_MODE = 0o750;

/**
 * NodePublishVolume: bind-mounts the Workload API directory at the target, creating the target
 * directory if needed. A target that already shows the directory is published already.
 */
export async function publish(
  options: NodeServiceOptions,
  volumeId: string,
  targetPath: string,
  volume: VolumeDirectory,
): Promise<void> {
  using source = openSource(options);
  await ensureLabels(options, source);
  const record = await volumeRecord(volume, targetPath);
  checkRecord(options.pluginName, record, volumeId, targetPath);
  const created = createTarget(volume, targetPath);
  const publication = new Publication(options, volume, targetPath, source, created);
  try {
    if (!(await publication.prepare(record))) await publication.bind();
  } finally {
    publication.release();
  }
}

/**
 * SELinux labels, when the driver sets them: what the directory held open needs is labelled.
 * A failure fails the publish only where pods would be denied (an enforcing node); a check that
 * did not answer (a file system in the directory that hangs) is UNAVAILABLE.
 */
async function ensureLabels(options: NodeServiceOptions, source: DirectoryHandle): Promise<void> {
  const outcome = await options.labeller?.ensure(source.sharedPath);
  switch (outcome?.kind) {
    case "refused":
      options.onLabelFailure?.("enforcing");
      throw failedPrecondition(outcome.problem);
    case "best-effort":
      options.onLabelFailure?.("permissive");
      return;
    case "unknown":
      throw unavailable(outcome.problem);
  }
}

/** The kubelet's record says whose volume the target belongs to: it must be this one. */
function checkRecord(
  pluginName: string,
  record: VolumeData | undefined,
  volumeId: string,
  targetPath: string,
): void {
  if (record?.driverName !== undefined && record.driverName !== pluginName) {
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
}

/** Creates the target directory (the kubelet creates only its parent); true if it did. */
function createTarget(volume: VolumeDirectory, targetPath: string): boolean {
  try {
    mkdirSync(volume.handle.entry(TARGET_NAME), { mode: TARGET_DIR_MODE });
  } catch (error) {
    if (isErrno(error, "EEXIST")) return false;
    throw internal(`creating target_path ${quote(targetPath)}: ${(error as Error).message}`, error);
  }
  return true;
}

/** One publish of one target, from the target directory held open to the bind checked. */
class Publication {
  private target: DirectoryState;

  constructor(
    private readonly options: NodeServiceOptions,
    private readonly volume: VolumeDirectory,
    private readonly targetPath: string,
    private readonly source: DirectoryHandle,
    /** This call created the target directory: a failed bind removes it again. */
    private readonly created: boolean,
  ) {
    this.target = directoryAt(volume, targetPath, "publish");
  }

  /**
   * Readies the target for the bind; true when it shows the Workload API directory already. A
   * kubelet restart re-publishes every volume, and mounting again would stack one more mount at
   * each restart. A mount of a directory removed and re-created since is stale: it goes.
   */
  async prepare(record: VolumeData | undefined): Promise<boolean> {
    const { volume, targetPath, source } = this;
    let target = this.target;
    if (this.created) {
      // Through the handle: the directory that was opened, not whatever the name leads to now.
      const handlePath = target.handle.path;
      fs(`setting the mode of ${quote(targetPath)}`, () => chmodSync(handlePath, TARGET_DIR_MODE));
    }
    if (!sameInode(target.handle, source)) {
      if (target.mountPoint) {
        target = await unmountAll(this.options, volume, targetPath, target, source, record);
        this.target = target;
      } else if (!this.created && !isEmptyDirectory(target.handle, targetPath)) {
        throw failedPrecondition(
          `target_path ${quote(targetPath)} is a directory with contents and not a mount point; refusing to mount over it`,
        );
      }
    }
    if (!sameInode(target.handle, source)) return false;
    await disentangle(this.options, volume, targetPath, target, source);
    return true;
  }

  /** Binds the Workload API directory at the target, and checks that the target shows it. */
  async bind(): Promise<void> {
    const { options, volume, targetPath, source } = this;
    const socketDir = options.workloadApiSocketDir;
    let sourceTree: MountTree | undefined;
    if (options.recursiveBind) {
      try {
        sourceTree = await recursiveSource(options, source);
      } catch (error) {
        this.abandon();
        throw error;
      }
    }
    const { target } = this;
    checkInPlace(volume, target.handle, targetPath);
    try {
      // The host-side mount stays read-write: the agent may re-create its socket in the
      // directory, and the driver may have to label it. Pods get it read-only, because
      // validation insists on a read-only volume, which the kubelet mounts read-only into the
      // pod's containers.
      await options.mounter.bindMount(
        { fd: source.fd, path: socketDir },
        { fd: target.handle.fd, path: targetPath },
        options.recursiveBind,
      );
    } catch (error) {
      this.abandon();
      options.onMountFailure?.("mount");
      throw commandFailed(`bind-mounting ${quote(socketDir)} at ${quote(targetPath)}`, error);
    }
    const bound = await this.verify(target);
    if (sourceTree && sourceTree.peerGroups.length > 0) {
      await makeSlave(options, volume, targetPath, bound);
    }
    if (sourceTree && !options.allowWritableSubmounts) await this.checkBoundTree(bound);
  }

  /**
   * With --recursive-bind: the tree the bind copied, checked again. A read-write file system
   * mounted in the directory between the check of its tree and the bind was copied too, and would
   * reach pods writable: the bind is taken back. It is a slave by now (or was never a peer), so
   * unmounting it unmounts nothing of the agent's.
   */
  private async checkBoundTree(bound: DirectoryState): Promise<void> {
    const { options, volume, targetPath, source } = this;
    const location = join(volume.location, TARGET_NAME);
    const [tree] = await mountTrees({ mountId: bound.handle.mountId, location });
    const writable = tree?.writable ?? [];
    if (writable.length === 0) return;
    try {
      await options.mounter.unmount({ fd: bound.handle.fd, path: targetPath });
    } catch (error) {
      options.onMountFailure?.("umount");
      throw commandFailed(`taking back the bind at ${quote(targetPath)}`, error);
    }
    this.abandon();
    // Named as in the directory, where they have to be changed.
    const inSource = writable.map((path) => source.location() + path.slice(location.length));
    throw failedPrecondition(
      `read-write mounts (${inSource.map(quote).join(", ")}) appeared in the Workload API directory ${quote(options.workloadApiSocketDir)} while it was being bound at ${quote(targetPath)}; the bind is taken back: with --recursive-bind pods would get them writable, since a pod's readOnly covers only the top of the volume: mount them read-only, or start the driver with --allow-writable-submounts`,
    );
  }

  /** The target after the bind: where the walk found it, and showing the directory. */
  private async verify(target: DirectoryState): Promise<DirectoryState> {
    const { volume, targetPath, source } = this;
    if (!volume.holdsTarget(target.handle)) {
      // Moved while `mount` ran: the mount went wherever the directory is now. Take it back.
      await this.options.mounter.unmount({ fd: target.handle.fd, path: targetPath });
      throw failedPrecondition(
        `target_path ${quote(targetPath)} was moved while it was being published; refusing to use it`,
      );
    }
    release(target);
    this.target = directoryAt(volume, targetPath, "publish");
    if (!sameInode(this.target.handle, source)) {
      this.abandon();
      throw internal(
        `mount reported success, but target_path ${quote(targetPath)} does not show ${quote(this.options.workloadApiSocketDir)}`,
      );
    }
    return this.target;
  }

  /** After a failed mount: keep a mount that did happen, remove a directory this call made. */
  private abandon(): void {
    this.release();
    if (!this.created) return;
    let state: TargetState | undefined;
    try {
      state = inspectEntry(this.volume.handle, TARGET_NAME);
      if (
        state.kind === "directory" &&
        !state.mountPoint &&
        !sameInode(state.handle, this.source)
      ) {
        rmdirSync(this.volume.handle.entry(TARGET_NAME));
      }
    } catch {
      // The kubelet removes the directory after a final error anyway.
    } finally {
      release(state);
    }
  }

  /** Closes the target's handle (once; closing again does nothing). */
  release(): void {
    release(this.target);
  }
}

function isEmptyDirectory(directory: DirectoryHandle, path: string): boolean {
  return fs(`listing ${quote(path)}`, () => readdirSync(directory.path)).length === 0;
}
