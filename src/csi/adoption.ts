import { readFileSync } from "node:fs";
import { directoryInode, inspectEntry, sameInode } from "../linux/inspect.ts";
import { parseMountInfo } from "../linux/mountinfo.ts";
import { KUBELET_CSI_VOLUME_PATH, openVolumeDir, TARGET_NAME } from "./kubelet.ts";
import { release } from "./target.ts";

/**
 * The volumes published before this process started, by volume key, from one read of the mount
 * table at start-up (never on a call's path): kubelet CSI volume paths that show the Workload
 * API directory.
 */
export function adoptPublished(socketDir: string): string[] {
  const source = directoryInode(socketDir);
  if (!source) return [];
  const keys: string[] = [];
  for (const mount of parseMountInfo(readFileSync("/proc/self/mountinfo", "utf8"))) {
    if (!KUBELET_CSI_VOLUME_PATH.test(mount.mountPoint)) continue;
    try {
      using volume = openVolumeDir(mount.mountPoint);
      const state = inspectEntry(volume.handle, TARGET_NAME);
      if (state.kind === "directory" && sameInode(state.handle, source)) keys.push(volume.key);
      release(state);
    } catch {
      // Not readable now: not counted.
    }
  }
  return keys;
}
