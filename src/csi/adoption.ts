import type { DirectoryHandle } from "../linux/descriptors.ts";
import { sameInode } from "../linux/inspect.ts";
import { type MountInfo, MountTableTooLarge, readMountTable } from "../linux/mountinfo.ts";
import { KUBELET_CSI_VOLUME_PATH, openVolumeDir } from "./kubelet.ts";
import { openSourceIfThere, type SourceOptions } from "./source.ts";

/**
 * The volumes published before this process started, by volume key with their volume directory
 * held open, from one read of the mount table at start-up (never on a call's path, and bounded
 * like every read of it): kubelet CSI volume paths that show the Workload API directory.
 */
export async function adoptPublished(options: SourceOptions): Promise<[string, DirectoryHandle][]> {
  using source = openSourceIfThere(options);
  if (!source) return [];
  let table: MountInfo[];
  try {
    table = await readMountTable();
  } catch (error) {
    // A node with more mounts than a call may read: the gauge starts from this process's own.
    if (error instanceof MountTableTooLarge) return [];
    throw error;
  }
  const volumes: [string, DirectoryHandle][] = [];
  for (const mount of table) {
    if (!KUBELET_CSI_VOLUME_PATH.test(mount.mountPoint)) continue;
    try {
      using volume = openVolumeDir(mount.mountPoint);
      using state = volume.target();
      const held = state.kind === "directory" && sameInode(state.dir, source) && volume.hold();
      if (held) volumes.push([volume.key, held]);
    } catch {
      // Not readable now: not counted.
    }
  }
  return volumes;
}
