import type { Directory, TargetDirectory } from "../linux/inspect.ts";
import type { Mounter } from "../linux/mounter.ts";
import { MountTableTooLarge } from "../linux/mountinfo.ts";
import { entangled, type MountTree, readMountTrees, type TreeRoot } from "../linux/submounts.ts";
import { commandFailed, failedPrecondition, internal, quote } from "./errors.ts";
import type { NodeEvents, Volume } from "./host.ts";
import { checkInPlace } from "./target.ts";

/**
 * What --recursive-bind adds to publishing and unpublishing: the Workload API directory is bound
 * with the mounts below it, and the copy at a target is made a slave of the directory's peer
 * groups. See ../../docs/spiffefs.md.
 */
export class RecursiveBinds {
  constructor(
    private readonly mounter: Mounter,
    private readonly events: NodeEvents,
    private readonly socketDir: string,
    /** --allow-writable-submounts: read-write mounts below the directory are bound too. */
    private readonly allowWritable: boolean,
  ) {}

  /**
   * The Workload API directory's mount tree, or FAILED_PRECONDITION naming the read-write mounts
   * in it: a pod's readOnly covers only the top of its volume, so a read-write mount below would
   * reach the pod writable.
   */
  async sourceTree(source: Directory): Promise<MountTree> {
    const [tree = { peerGroups: [], writable: [] }] = await mountTrees(treeRoot(source));
    if (tree.writable.length > 0 && !this.allowWritable) {
      throw failedPrecondition(
        `the Workload API directory ${quote(this.socketDir)} holds read-write mounts (${tree.writable.map(quote).join(", ")}); with --recursive-bind pods would get them writable, since a pod's readOnly covers only the top of the volume: mount them read-only, or start the driver with --allow-writable-submounts`,
      );
    }
    return tree;
  }

  /**
   * A target still in a peer group of the Workload API directory's tree (a publish that stopped
   * between its bind and makeSlave) is made a slave before anything else. Mounts at such a
   * target propagate into the agent's directory, and unmounting it would unmount the agent's own
   * file systems.
   */
  async disentangle(
    volume: Volume,
    targetPath: string,
    target: TargetDirectory,
    source: Directory,
  ): Promise<void> {
    if (!target.mountPoint) return;
    const [sourceTree, targetTree] = await mountTrees(treeRoot(source), {
      mountId: target.dir.mountId,
      location: volume.targetLocation,
    });
    if (sourceTree && targetTree && entangled(sourceTree, targetTree)) {
      await this.makeSlave(volume, targetPath, target.dir);
    }
  }

  /**
   * Makes the recursive bind at the target a slave of the Workload API directory's peer groups:
   * mounts made in the directory later still reach the target, and nothing mounted at the
   * target reaches the directory. The top stays shared (in a group of its own), so the copies
   * the kubelet root's propagation made of it, and the pods' slave copies, follow it.
   */
  async makeSlave(volume: Volume, targetPath: string, target: Directory): Promise<void> {
    checkInPlace(volume, target, targetPath);
    try {
      await this.mounter.makeSlave({ fd: target.fd, path: targetPath });
    } catch (error) {
      // The mount stays: unmounting it while it is a peer of the directory's mounts would
      // unmount those too. A retried publish or unpublish makes it a slave first.
      this.events.mountFailed("mount");
      throw commandFailed(`making the mounts at ${quote(targetPath)} slaves`, error);
    }
  }

  /**
   * The read-write mounts the bind at the target copied, named as in the Workload API directory.
   * One mounted in the directory between the check of its tree and the bind was copied too.
   */
  async writableAt(volume: Volume, bound: Directory, source: Directory): Promise<string[]> {
    if (this.allowWritable) return [];
    const location = volume.targetLocation;
    const [tree] = await mountTrees({ mountId: bound.mountId, location });
    return (tree?.writable ?? []).map((path) => source.location() + path.slice(location.length));
  }
}

/** The mount trees at these roots, from the mount table. */
async function mountTrees(...roots: TreeRoot[]): Promise<MountTree[]> {
  try {
    return await readMountTrees(roots);
  } catch (error) {
    if (error instanceof MountTableTooLarge) throw failedPrecondition(error.message);
    throw internal(`reading /proc/self/mountinfo: ${(error as Error).message}`, error);
  }
}

function treeRoot(directory: Directory): TreeRoot {
  return { mountId: directory.mountId, location: directory.location() };
}
