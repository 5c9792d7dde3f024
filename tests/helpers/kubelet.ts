// Stands in for the kubelet: builds exactly the requests it sends for an inline ephemeral CSI
// volume (see ../shared/docs/kubelet-contract.md) and prepares the directories it prepares.
import { createHash, randomUUID } from "node:crypto";
import { mkdirSync, readFileSync, rmdirSync, rmSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { create } from "@bufbuild/protobuf";
import {
  type NodeGetVolumeStatsRequest,
  NodeGetVolumeStatsRequestSchema,
  type NodePublishVolumeRequest,
  NodePublishVolumeRequestSchema,
  type NodeUnpublishVolumeRequest,
  NodeUnpublishVolumeRequestSchema,
  VolumeCapability_AccessMode_Mode,
} from "../../src/gen/csi/v1/csi_pb.ts";
import { parseMountInfo } from "../../src/linux/mountinfo.ts";

export const DRIVER_NAME = "csi.spiffe.io";

export interface PodVolume {
  podUid: string;
  volumeName: string;
  volumeId: string;
  /** <kubelet-root>/pods/<uid>/volumes/kubernetes.io~csi/<volume>, made by the kubelet. */
  volumeDir: string;
  /** volumeDir/mount, made by the driver. */
  targetPath: string;
}

export function podVolume(kubeletRoot: string, volumeName = "spiffe-workload-api"): PodVolume {
  const podUid = randomUUID();
  const volumeDir = join(kubeletRoot, "pods", podUid, "volumes", "kubernetes.io~csi", volumeName);
  return {
    podUid,
    volumeName,
    volumeId: `csi-${createHash("sha256")
      .update(podUid + volumeName)
      .digest("hex")}`,
    volumeDir,
    targetPath: join(volumeDir, "mount"),
  };
}

/** What the kubelet does before NodePublishVolume: the volume directory and vol_data.json. */
export function prepareVolume(volume: PodVolume): void {
  mkdirSync(volume.volumeDir, { recursive: true, mode: 0o750 });
  writeFileSync(
    join(volume.volumeDir, "vol_data.json"),
    JSON.stringify({
      driverName: DRIVER_NAME,
      volumeHandle: volume.volumeId,
      volumeLifecycleMode: "Ephemeral",
      specVolID: volume.volumeName,
    }),
  );
}

export function publishRequest(volume: PodVolume): NodePublishVolumeRequest {
  return create(NodePublishVolumeRequestSchema, {
    volumeId: volume.volumeId,
    targetPath: volume.targetPath,
    volumeCapability: {
      accessType: { case: "mount", value: { fsType: "", mountFlags: [] } },
      accessMode: { mode: VolumeCapability_AccessMode_Mode.SINGLE_NODE_WRITER },
    },
    readonly: true,
    volumeContext: {
      "csi.storage.k8s.io/pod.name": `workload-${volume.podUid.slice(0, 8)}`,
      "csi.storage.k8s.io/pod.namespace": "default",
      "csi.storage.k8s.io/pod.uid": volume.podUid,
      "csi.storage.k8s.io/serviceAccount.name": "default",
      "csi.storage.k8s.io/ephemeral": "true",
    },
  });
}

export function unpublishRequest(volume: PodVolume): NodeUnpublishVolumeRequest {
  return create(NodeUnpublishVolumeRequestSchema, {
    volumeId: volume.volumeId,
    targetPath: volume.targetPath,
  });
}

export function statsRequest(volume: PodVolume): NodeGetVolumeStatsRequest {
  return create(NodeGetVolumeStatsRequestSchema, {
    volumeId: volume.volumeId,
    volumePath: volume.targetPath,
  });
}

/** How many mounts sit at `path` (stacked mounts count once each). */
export function mountsAt(path: string): number {
  return parseMountInfo(readFileSync("/proc/self/mountinfo", "utf8")).filter(
    (mount) => mount.mountPoint === path,
  ).length;
}

/** How many mounts lie at or below `dir`. */
export function mountsUnder(dir: string): number {
  return parseMountInfo(readFileSync("/proc/self/mountinfo", "utf8")).filter(
    (mount) => mount.mountPoint === dir || mount.mountPoint.startsWith(`${dir}/`),
  ).length;
}

/**
 * What the kubelet does after a successful NodeUnpublishVolume: removes vol_data.json and the
 * volume directory, then the pod's directories. rmdir fails if the driver left its mount
 * directory behind.
 */
export function removeVolume(volume: PodVolume): void {
  rmSync(join(volume.volumeDir, "vol_data.json"), { force: true });
  rmdirSync(volume.volumeDir);
  const podDir = dirname(dirname(dirname(volume.volumeDir)));
  for (const dir of [dirname(volume.volumeDir), dirname(dirname(volume.volumeDir)), podDir]) {
    rmdirSync(dir);
  }
}

/** The process's resident memory, from /proc/<pid>/status, in MiB. */
export function residentMemory(pid: number): { rssMb: number; anonMb: number; peakMb: number } {
  const status = readFileSync(`/proc/${pid}/status`, "utf8");
  const kb = (key: string) =>
    Number(new RegExp(`^${key}:\\s+(\\d+) kB`, "m").exec(status)?.[1] ?? Number.NaN);
  return { rssMb: kb("VmRSS") / 1024, anonMb: kb("RssAnon") / 1024, peakMb: kb("VmHWM") / 1024 };
}
