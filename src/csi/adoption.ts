import { readFileSync } from "node:fs";
import { type DirectoryHandle, openDirectory } from "../linux/descriptors.ts";
import { directoryInode, inspectEntry, sameInode } from "../linux/inspect.ts";
import { parseMountInfo } from "../linux/mountinfo.ts";
import { KUBELET_CSI_VOLUME_PATH, openVolumeDir, TARGET_NAME } from "./kubelet.ts";
import { release } from "./target.ts";

/**
 * The volumes published before this process started, by volume key with their volume directory
 * held open, from one read of the mount table at start-up (never on a call's path): kubelet CSI
 * volume paths that show the Workload API directory.
 */
export function adoptPublished(socketDir: string): [string, DirectoryHandle][] {
  const source = directoryInode(socketDir);
  if (!source) return [];
  const volumes: [string, DirectoryHandle][] = [];
  for (const mount of parseMountInfo(readFileSync("/proc/self/mountinfo", "utf8"))) {
    if (!KUBELET_CSI_VOLUME_PATH.test(mount.mountPoint)) continue;
    try {
      using volume = openVolumeDir(mount.mountPoint);
      const state = inspectEntry(volume.handle, TARGET_NAME);
      if (state.kind === "directory" && sameInode(state.handle, source)) {
        volumes.push([volume.key, openDirectory(volume.handle.path)]);
      }
      release(state);
    } catch {
      // Not readable now: not counted.
    }
  }
  return volumes;
}
