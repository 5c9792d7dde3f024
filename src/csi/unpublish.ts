import { rmdirSync } from "node:fs";
import { dirname } from "node:path";
import type { DirectoryHandle } from "../linux/descriptors.ts";
import { isErrno } from "../linux/errno.ts";
import {
  type DirectoryState,
  directoryInode,
  type Inode,
  inspectEntry,
  sameInode,
} from "../linux/inspect.ts";
import { findMount } from "../linux/mountinfo.ts";
import { commandFailed, failedPrecondition, fs, internal, quote } from "./errors.ts";
import { TARGET_NAME, type VolumeData, type VolumeDirectory } from "./kubelet.ts";
import type { NodeServiceOptions } from "./node.ts";
import { disentangle } from "./recursive.ts";
import { openSourceIfThere } from "./source.ts";
import { directoryAt, release, volumeRecord } from "./target.ts";

/**
 * NodeUnpublishVolume: removes every mount of this driver's at the target, including duplicates
 * stacked by older drivers, then the target directory itself (never recursively). After a node
 * reboot there is no mount, and the directory is simply removed.
 */
export async function unpublish(
  options: NodeServiceOptions,
  targetPath: string,
  volume: VolumeDirectory,
): Promise<void> {
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
  const source = openSourceIfThere(options.workloadApiSocketDir);
  try {
    release(await unmountAll(options, volume, targetPath, state, source));
  } finally {
    source?.close();
  }
  removeTarget(volume, targetPath);
}

/** Removes the (now unmounted) target directory; it must be empty. */
function removeTarget(volume: VolumeDirectory, targetPath: string): void {
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
    throw internal(`removing target_path ${quote(targetPath)}: ${(error as Error).message}`, error);
  }
}

/**
 * Unmounts the target for as long as it is a mount point of this driver's. Takes the state's
 * handle and returns the final state, whose handle the caller closes.
 */
export async function unmountAll(
  options: NodeServiceOptions,
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
        record = await volumeRecord(volume, targetPath);
        recordRead = true;
      }
      if (!ownsMount(options, current.handle, source, record)) {
        throw failedPrecondition(
          `target_path ${quote(targetPath)} is a mount point (${describeMount(current.handle.mountId)}) that is not this driver's; refusing to unmount it`,
        );
      }
      // A stale bind of a re-created directory can still share a peer group with it too.
      if (source) await disentangle(options, volume, targetPath, current, source);
      // `umount` of the handle removes the topmost mount there: if another was stacked on the
      // one checked meanwhile, check that one first. What remains is the moment it takes to
      // start `umount`.
      const top = directoryAt(volume, targetPath, "unmount");
      if (top.handle.mountId !== current.handle.mountId) {
        release(current);
        current = top;
        continue;
      }
      release(top);
      current = await unmountTop(options, volume, targetPath, current);
    }
    return current;
  } catch (error) {
    release(current);
    throw error;
  }
}

/** Runs `umount` on the topmost mount at the target; takes the state and returns the next one. */
async function unmountTop(
  options: NodeServiceOptions,
  volume: VolumeDirectory,
  targetPath: string,
  current: DirectoryState,
): Promise<DirectoryState> {
  try {
    await options.mounter.unmount({ fd: current.handle.fd, path: targetPath });
  } catch (error) {
    options.onMountFailure?.("umount");
    throw commandFailed(`unmounting ${quote(targetPath)}`, error);
  }
  const previousMountId = current.handle.mountId;
  release(current);
  const next = directoryAt(volume, targetPath, "unmount");
  if (next.mountPoint && next.handle.mountId === previousMountId) {
    release(next);
    throw internal(`umount reported success, but ${quote(targetPath)} is still the same mount`);
  }
  return next;
}

/**
 * Whether a mount at the target may be removed. The fast answer: it shows the Workload API
 * directory. Otherwise the kubelet's record beside the target says whose volume this is: this
 * driver's volumes may hold a stale bind of a directory since replaced (whatever file system it
 * was on), and everything at them is this driver's to remove. Without a record, only a bind of
 * a removed directory on the Workload API directory's device is taken for a stale one of ours.
 */
function ownsMount(
  options: NodeServiceOptions,
  target: DirectoryHandle,
  source: Inode | undefined,
  record: VolumeData | undefined,
): boolean {
  if (source && sameInode(target, source)) return true;
  const driverName = record?.driverName;
  if (driverName !== undefined) return driverName === options.pluginName;
  const parent = dirname(options.workloadApiSocketDir);
  const device =
    source?.dev ?? fs(`inspecting ${quote(parent)}`, () => directoryInode(parent))?.dev;
  return target.nlink === 0 && target.dev === device;
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
