import { status } from "@grpc/grpc-js";
import { type Directory, sameInode, type TargetDirectory } from "../linux/inspect.ts";
import type { Mounter } from "../linux/mounter.ts";
import type { MountTree } from "../linux/submounts.ts";
import { RpcError } from "../rpc/status.ts";
import { commandFailed, failedPrecondition, fs, internal, quote, unavailable } from "./errors.ts";
import type { Labeller, NodeEvents, NodeHost, Volume, VolumeData } from "./host.ts";
import type { RecursiveBinds } from "./recursive.ts";
import { checkInPlace, targetDirectory, volumeRecord } from "./target.ts";
import type { Unpublisher } from "./unpublish.ts";

// The kubelet creates <volume-name>/ with 0750; the mount directory gets the same.
const TARGET_DIR_MODE = 0o750;

/** What a publish is given: the node service's parts it uses, and two of its settings. */
export interface PublisherParts {
  host: NodeHost;
  mounter: Mounter;
  events: NodeEvents;
  unpublisher: Unpublisher;
  labeller?: Labeller;
  recursive?: RecursiveBinds;
  pluginName: string;
  workloadApiSocketDir: string;
}

/**
 * NodePublishVolume, after validation and the pod policy: bind-mounts the Workload API directory
 * at the target, creating the target directory if needed. Its steps, in the order they run:
 * open the source, label it, check the kubelet's record, ready the target, bind, check the bind.
 * A target that already shows the directory is published already.
 */
export class Publisher {
  constructor(private readonly parts: PublisherParts) {}

  async publish(volumeId: string, targetPath: string, volume: Volume): Promise<void> {
    using source = this.openSource();
    await this.label(source);
    const record = await this.checkRecord(volume, volumeId, targetPath);
    const created = this.createTarget(volume, targetPath);
    let tree: MountTree | undefined;
    {
      using target = await this.readyTarget(volume, targetPath, source, created, record);
      if (sameInode(target.dir, source)) {
        // Published already: a kubelet restart re-publishes every volume, and mounting again
        // would stack one more mount at each restart.
        await this.parts.recursive?.disentangle(volume, targetPath, target, source);
        return;
      }
      tree = await this.recursiveTree(volume, source, created);
      await this.bind(volume, targetPath, source, target.dir, created);
    }
    using bound = this.checkBound(volume, targetPath, source, created);
    if (tree) await this.settleTree(volume, targetPath, source, bound, tree, created);
  }

  /** The Workload API directory held open, or its status: UNAVAILABLE, FAILED_PRECONDITION. */
  private openSource(): Directory {
    const source = this.parts.host.openSource();
    if (!source.ok) throw new RpcError(source.code, source.problem);
    return source.dir;
  }

  /**
   * SELinux labels, when the driver sets them: what the directory held open needs is labelled.
   * A failure fails the publish only where pods would be denied (an enforcing node); a check that
   * did not answer (a file system in the directory that hangs) is UNAVAILABLE.
   */
  private async label(source: Directory): Promise<void> {
    const outcome = await this.parts.labeller?.ensure(source.sharedPath);
    switch (outcome?.kind) {
      case "refused":
        this.parts.events.labelFailed("enforcing");
        throw failedPrecondition(outcome.problem);
      case "best-effort":
        this.parts.events.labelFailed("permissive");
        return;
      case "unknown":
        throw unavailable(outcome.problem);
    }
  }

  /** The kubelet's record says whose volume the target belongs to: it must be this one. */
  private async checkRecord(
    volume: Volume,
    volumeId: string,
    targetPath: string,
  ): Promise<VolumeData | undefined> {
    const record = await volumeRecord(volume, targetPath);
    const { pluginName } = this.parts;
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
    return record;
  }

  /** Creates the target directory (the kubelet creates only its parent); true if it did. */
  private createTarget(volume: Volume, targetPath: string): boolean {
    return fs(`creating target_path ${quote(targetPath)}`, () =>
      volume.createTarget(TARGET_DIR_MODE),
    );
  }

  /**
   * The target, held open and ready for the bind: a stale mount there (of a directory removed
   * and re-created since) is removed first, and a directory with contents is refused. It shows
   * the Workload API directory when published already.
   */
  private async readyTarget(
    volume: Volume,
    targetPath: string,
    source: Directory,
    created: boolean,
    record: VolumeData | undefined,
  ): Promise<TargetDirectory> {
    const target = targetDirectory(volume, targetPath, "publish");
    try {
      if (created) {
        fs(`setting the mode of ${quote(targetPath)}`, () =>
          this.parts.host.chmod(target.dir, TARGET_DIR_MODE),
        );
      }
      if (sameInode(target.dir, source)) return target;
      if (target.mountPoint) {
        return await this.parts.unpublisher.unmountAll(volume, targetPath, target, source, record);
      }
      const empty =
        created || fs(`listing ${quote(targetPath)}`, () => this.parts.host.isEmpty(target.dir));
      if (!empty) {
        throw failedPrecondition(
          `target_path ${quote(targetPath)} is a directory with contents and not a mount point; refusing to mount over it`,
        );
      }
      return target;
    } catch (error) {
      target[Symbol.dispose]();
      throw error;
    }
  }

  /** With --recursive-bind: the directory's mount tree, checked before the bind copies it. */
  private async recursiveTree(
    volume: Volume,
    source: Directory,
    created: boolean,
  ): Promise<MountTree | undefined> {
    try {
      return await this.parts.recursive?.sourceTree(source);
    } catch (error) {
      this.abandon(volume, source, created);
      throw error;
    }
  }

  /**
   * Binds the Workload API directory at the target. The host-side mount stays read-write: the
   * agent may re-create its socket in the directory, and the driver may have to label it. Pods
   * get it read-only, because validation insists on a read-only volume, which the kubelet mounts
   * read-only into the pod's containers.
   */
  private async bind(
    volume: Volume,
    targetPath: string,
    source: Directory,
    target: Directory,
    created: boolean,
  ): Promise<void> {
    const { mounter, workloadApiSocketDir: socketDir, recursive } = this.parts;
    checkInPlace(volume, target, targetPath);
    try {
      await mounter.bindMount(
        { fd: source.fd, path: socketDir },
        { fd: target.fd, path: targetPath },
        recursive !== undefined,
      );
    } catch (error) {
      this.abandon(volume, source, created);
      this.parts.events.mountFailed("mount");
      throw commandFailed(`bind-mounting ${quote(socketDir)} at ${quote(targetPath)}`, error, true);
    }
    if (!fs(`locating ${quote(targetPath)}`, () => volume.holds(target))) {
      // Moved while `mount` ran: the mount went wherever the directory is now. Take it back.
      await mounter.unmount({ fd: target.fd, path: targetPath });
      throw failedPrecondition(
        `target_path ${quote(targetPath)} was moved while it was being published; refusing to use it`,
      );
    }
  }

  /** The target after the bind, looked at again: it must show the Workload API directory. */
  private checkBound(
    volume: Volume,
    targetPath: string,
    source: Directory,
    created: boolean,
  ): TargetDirectory {
    const bound = targetDirectory(volume, targetPath, "publish");
    if (!sameInode(bound.dir, source)) {
      bound[Symbol.dispose]();
      this.abandon(volume, source, created);
      throw internal(
        `mount reported success, but target_path ${quote(targetPath)} does not show ${quote(this.parts.workloadApiSocketDir)}`,
      );
    }
    return bound;
  }

  /**
   * With --recursive-bind: the copied tree made a slave of the directory's peer groups, and
   * checked again. A read-write file system mounted in the directory between the check of its
   * tree and the bind was copied too, and would reach pods writable: the bind is taken back. It
   * is a slave by now (or was never a peer), so unmounting it unmounts nothing of the agent's.
   */
  private async settleTree(
    volume: Volume,
    targetPath: string,
    source: Directory,
    bound: TargetDirectory,
    tree: MountTree,
    created: boolean,
  ): Promise<void> {
    const recursive = this.parts.recursive;
    if (!recursive) return;
    if (tree.peerGroups.length > 0) await recursive.makeSlave(volume, targetPath, bound.dir);
    const writable = await recursive.writableAt(volume, bound.dir, source);
    if (writable.length === 0) return;
    try {
      await this.parts.mounter.unmount({ fd: bound.dir.fd, path: targetPath });
    } catch (error) {
      this.parts.events.mountFailed("umount");
      throw commandFailed(`taking back the bind at ${quote(targetPath)}`, error);
    }
    bound[Symbol.dispose]();
    this.abandon(volume, source, created);
    throw failedPrecondition(
      `read-write mounts (${writable.map(quote).join(", ")}) appeared in the Workload API directory ${quote(this.parts.workloadApiSocketDir)} while it was being bound at ${quote(targetPath)}; the bind is taken back: with --recursive-bind pods would get them writable, since a pod's readOnly covers only the top of the volume: mount them read-only, or start the driver with --allow-writable-submounts`,
    );
  }

  /** After a failed mount: keep a mount that did happen, remove a directory this call made. */
  private abandon(volume: Volume, source: Directory, created: boolean): void {
    if (!created) return;
    try {
      using state = volume.target();
      if (state.kind === "directory" && !state.mountPoint && !sameInode(state.dir, source)) {
        volume.removeTarget();
      }
    } catch {
      // The kubelet removes the directory after a final error anyway.
    }
  }
}
