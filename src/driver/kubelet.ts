import { readFileSync, realpathSync } from "node:fs";
import { dirname, join } from "node:path";
import { isErrno } from "../mount/inspect.ts";

/**
 * Where the kubelet asks for an inline CSI volume:
 * <kubelet-root>/pods/<pod-uid>/volumes/kubernetes.io~csi/<volume-name>/mount.
 * The kubelet root differs between distributions (microk8s, k0s), so only the tail is fixed.
 */
export const KUBELET_CSI_VOLUME_PATH =
  /^\/(?:[^/]+\/)*pods\/[^/]+\/volumes\/kubernetes\.io~csi\/[^/]+\/mount$/;

// pods, <pod-uid>, volumes, kubernetes.io~csi, <volume-name>, mount
const TAIL_SEGMENTS = 6;

/** What the kubelet records beside the target before publishing: <volume-dir>/vol_data.json. */
export interface VolumeData {
  driverName?: string;
  volumeHandle?: string;
}

/** The kubelet's record for the volume at `targetPath`; undefined when there is none to read. */
export function readVolumeData(targetPath: string): VolumeData | undefined {
  let text: string;
  try {
    text = readFileSync(join(dirname(targetPath), "vol_data.json"), "utf8");
  } catch (error) {
    if (isErrno(error, "ENOENT")) return undefined;
    throw error;
  }
  try {
    const data = JSON.parse(text) as Record<string, unknown>;
    return {
      driverName: typeof data.driverName === "string" ? data.driverName : undefined,
      volumeHandle: typeof data.volumeHandle === "string" ? data.volumeHandle : undefined,
    };
  } catch {
    // A torn or foreign file says nothing about the volume.
    return undefined;
  }
}

/**
 * Where the volume directory (the target's parent) really is when it is not where the path says:
 * a symbolic link below the kubelet root (in the pod's own directories) would let the bind mount
 * land elsewhere. Links above it (a kubelet root that is itself a link) are followed, as the
 * kubelet follows them. Undefined when the path is as it says; throws ENOENT when it is missing.
 */
export function redirectedVolumeDir(targetPath: string): string | undefined {
  const segments = targetPath.split("/");
  const kubeletRoot = segments.slice(0, -TAIL_SEGMENTS).join("/") || "/";
  const expected = join(realpathSync(kubeletRoot), ...segments.slice(-TAIL_SEGMENTS, -1));
  const actual = realpathSync(dirname(targetPath));
  return actual === expected ? undefined : actual;
}
