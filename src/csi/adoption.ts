import type { DirectoryHandle } from "../linux/descriptors.ts";
import { type MountInfo, MountTableTooLarge, readMountTable } from "../linux/mountinfo.ts";
import { KUBELET_CSI_VOLUME_PATH, openVolumeDir } from "./kubelet.ts";
import { bindOrigin, openSourceIfThere, type SourceOptions } from "./source.ts";

/**
 * The volumes published before this process started, by volume key with their volume directory
 * held open, from one read of the mount table at start-up (never on a call's path, and bounded
 * like every read of it): kubelet CSI volume paths whose mount is a bind of the Workload API
 * directory (the same file system and directory in it, as the table says). Nothing at another
 * driver's volume is opened or stat'ed: a file system there that hangs holds nothing here.
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
  const origin = bindOrigin(source, table);
  if (!origin) return [];
  const volumes: [string, DirectoryHandle][] = [];
  for (const mount of table) {
    if (!KUBELET_CSI_VOLUME_PATH.test(mount.mountPoint)) continue;
    if (mount.device !== origin.device || mount.root !== origin.root) continue;
    try {
      // The kubelet's directories down to the volume's: the target itself is not opened.
      using volume = openVolumeDir(mount.mountPoint);
      const held = volume.hold();
      if (held) volumes.push([volume.key, held]);
    } catch {
      // Not reachable now: not counted.
    }
  }
  return volumes;
}
