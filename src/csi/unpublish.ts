import { isErrno } from "../linux/errno.ts";
import { type Directory, type Inode, sameInode, type TargetDirectory } from "../linux/inspect.ts";
import type { Mounter } from "../linux/mounter.ts";
import { commandFailed, failedPrecondition, fs, internal, quote } from "./errors.ts";
import type { NodeEvents, NodeHost, Volume, VolumeData } from "./host.ts";
import type { RecursiveBinds } from "./recursive.ts";
import { targetDirectory, volumeRecord } from "./target.ts";

/**
 * NodeUnpublishVolume: removes every mount of this driver's at the target, including duplicates
 * stacked by older drivers, then the target directory itself (never recursively). After a node
 * reboot there is no mount, and the directory is simply removed. A publish uses unmountAll to
 * clear a stale bind before binding again.
 */
export class Unpublisher {
  constructor(
    private readonly host: NodeHost,
    private readonly mounter: Mounter,
    private readonly events: NodeEvents,
    private readonly pluginName: string,
    /** With --recursive-bind. */
    private readonly recursive: RecursiveBinds | undefined,
  ) {}

  async unpublish(targetPath: string, volume: Volume): Promise<void> {
    const state = fs(`unpublish: inspecting ${quote(targetPath)}`, () => volume.target());
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
    {
      // The source answers "is this mount ours?" at once; without it, the kubelet's record does.
      using source = this.sourceIfThere();
      using _unmounted = await this.unmountAll(volume, targetPath, state, source);
    }
    removeTarget(volume, targetPath);
  }

  /**
   * The Workload API directory held open, or undefined whatever stops it: removing a bind the
   * driver made needs only the target, so a missing, refused or broken directory never keeps a
   * pod from going.
   */
  private sourceIfThere(): Directory | undefined {
    try {
      const found = this.host.openSource();
      return found.ok ? found.dir : undefined;
    } catch {
      return undefined;
    }
  }

  /**
   * Unmounts the target for as long as it is a mount point of this driver's. Takes `state` (its
   * handle is the callee's to close) and returns the final state, which the caller disposes of.
   */
  async unmountAll(
    volume: Volume,
    targetPath: string,
    state: TargetDirectory,
    source: Directory | undefined,
    knownRecord?: VolumeData,
  ): Promise<TargetDirectory> {
    let current = state;
    let record = knownRecord;
    let recordRead = knownRecord !== undefined;
    try {
      while (current.mountPoint) {
        if (!(source && sameInode(current.dir, source)) && !recordRead) {
          record = await volumeRecord(volume, targetPath);
          recordRead = true;
        }
        if (!this.owns(current.dir, source, record)) {
          throw failedPrecondition(
            `target_path ${quote(targetPath)} is a mount point (${await this.host.describeMount(current.dir.mountId)}) that is not this driver's; refusing to unmount it`,
          );
        }
        // A stale bind of a re-created directory can still share a peer group with it too.
        if (source) await this.recursive?.disentangle(volume, targetPath, current, source);
        // `umount` of the handle removes the topmost mount there: if another was stacked on the
        // one checked meanwhile, check that one first. What remains is the moment it takes to
        // start `umount`.
        const top = targetDirectory(volume, targetPath, "unmount");
        if (top.dir.mountId !== current.dir.mountId) {
          current[Symbol.dispose]();
          current = top;
          continue;
        }
        top[Symbol.dispose]();
        current = await this.unmountTop(volume, targetPath, current);
      }
      return current;
    } catch (error) {
      current[Symbol.dispose]();
      throw error;
    }
  }

  /** Runs `umount` on the topmost mount at the target; takes the state and returns the next one. */
  private async unmountTop(
    volume: Volume,
    targetPath: string,
    current: TargetDirectory,
  ): Promise<TargetDirectory> {
    const { dir } = current;
    try {
      // The mounter may close the handle first: a descriptor on the mount keeps it busy.
      await this.mounter.unmount({ fd: dir.fd, path: targetPath, close: () => dir.close() });
    } catch (error) {
      this.events.mountFailed("umount");
      throw commandFailed(`unmounting ${quote(targetPath)}`, error);
    }
    const previousMountId = dir.mountId;
    current[Symbol.dispose]();
    const next = targetDirectory(volume, targetPath, "unmount");
    if (next.mountPoint && next.dir.mountId === previousMountId) {
      next[Symbol.dispose]();
      throw internal(`umount reported success, but ${quote(targetPath)} is still the same mount`);
    }
    return next;
  }

  /**
   * Whether a mount at the target may be removed. The fast answer: it shows the Workload API
   * directory. Otherwise the kubelet's record beside the target says whose volume this is: this
   * driver's volumes may hold a stale bind of a directory since replaced (whatever file system
   * it was on), and everything at them is this driver's to remove. Without a record, only a
   * bind of a removed directory on the Workload API directory's device is taken for a stale one
   * of ours.
   */
  private owns(target: Directory, source: Inode | undefined, record: VolumeData | undefined) {
    if (source && sameInode(target, source)) return true;
    const driverName = record?.driverName;
    if (driverName !== undefined) return driverName === this.pluginName;
    const device = source?.dev ?? this.host.sourceParentDevice();
    return target.nlink === 0 && target.dev === device;
  }
}

/** Removes the (now unmounted) target directory; it must be empty. */
function removeTarget(volume: Volume, targetPath: string): void {
  try {
    volume.removeTarget();
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
    throw internal(`removing target_path ${quote(targetPath)}: ${(error as Error).message}`, error);
  }
}
