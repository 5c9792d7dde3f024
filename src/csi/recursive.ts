import { join } from "node:path";
import type { DirectoryHandle } from "../linux/descriptors.ts";
import type { DirectoryState } from "../linux/inspect.ts";
import { type MountInfo, MountTableTooLarge, readMountTable } from "../linux/mountinfo.ts";
import { entangled, type MountTree, mountTree } from "../linux/submounts.ts";
import { commandFailed, failedPrecondition, internal, quote } from "./errors.ts";
import { TARGET_NAME, type VolumeDirectory } from "./kubelet.ts";
import type { NodeServiceOptions } from "./node.ts";
import { checkInPlace } from "./target.ts";

/**
 * What --recursive-bind adds to publishing and unpublishing: the Workload API directory is bound
 * with the mounts below it, and the copy at a target is made a slave of the directory's peer
 * groups. See ../../README.md, "File systems inside the directory".
 */

/** The mount table, read once for a call that needs it (only with --recursive-bind). */
export async function mountTable(): Promise<MountInfo[]> {
  try {
    return await readMountTable();
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
export function recursiveSource(
  options: NodeServiceOptions,
  table: MountInfo[],
  source: DirectoryHandle,
): MountTree {
  const tree = mountTree(table, source.mountId, source.location());
  if (tree.writable.length > 0 && !options.allowWritableSubmounts) {
    throw failedPrecondition(
      `the Workload API directory ${quote(options.workloadApiSocketDir)} holds read-write mounts (${tree.writable.map(quote).join(", ")}); with --recursive-bind pods would get them writable, since a pod's readOnly covers only the top of the volume: mount them read-only, or start the driver with --allow-writable-submounts`,
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
export async function disentangle(
  options: NodeServiceOptions,
  volume: VolumeDirectory,
  targetPath: string,
  target: DirectoryState,
  source: DirectoryHandle,
): Promise<void> {
  if (!options.recursiveBind || !target.mountPoint) return;
  const table = await mountTable();
  const sourceTree = mountTree(table, source.mountId, source.location());
  const targetTree = mountTree(table, target.handle.mountId, join(volume.location, TARGET_NAME));
  if (entangled(sourceTree, targetTree)) await makeSlave(options, volume, targetPath, target);
}

/**
 * Makes the recursive bind at the target a slave of the Workload API directory's peer groups:
 * mounts made in the directory later still reach the target, and nothing mounted at the
 * target reaches the directory. The top stays shared (in a group of its own), so the copies
 * the kubelet root's propagation made of it, and the pods' slave copies, follow it.
 */
export async function makeSlave(
  options: NodeServiceOptions,
  volume: VolumeDirectory,
  targetPath: string,
  target: DirectoryState,
): Promise<void> {
  checkInPlace(volume, target.handle, targetPath);
  try {
    await options.mounter.makeSlave({ fd: target.handle.fd, path: targetPath });
  } catch (error) {
    // The mount stays: unmounting it while it is a peer of the directory's mounts would
    // unmount those too. A retried publish or unpublish makes it a slave first.
    options.onMountFailure?.("mount");
    throw commandFailed(`making the mounts at ${quote(targetPath)} slaves`, error);
  }
}
