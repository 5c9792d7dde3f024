import { type BigIntStatsFs, readdirSync, statfsSync } from "node:fs";
import type { MessageInitShape } from "@bufbuild/protobuf";
import {
  type NodeGetVolumeStatsResponseSchema,
  VolumeUsage_Unit as UsageUnit,
  type VolumeConditionSchema,
} from "../gen/csi/v1/csi_pb.ts";
import type { DirectoryHandle } from "../linux/descriptors.ts";
import { type DirectoryState, inspectEntry, sameInode } from "../linux/inspect.ts";
import { fs, notFound, quote } from "./errors.ts";
import { TARGET_NAME, type VolumeDirectory } from "./kubelet.ts";
import type { NodeServiceOptions } from "./node.ts";
import { openSourceIfThere, sourceProblem } from "./source.ts";
import { release, volumeRecord } from "./target.ts";

type Condition = MessageInitShape<typeof VolumeConditionSchema>;

/** NodeGetVolumeStats: the volume's condition and the usage of the file system under it. */
export async function volumeStats(
  options: NodeServiceOptions,
  volumePath: string,
  volume: VolumeDirectory,
): Promise<MessageInitShape<typeof NodeGetVolumeStatsResponseSchema>> {
  const state = fs(`volume stats: inspecting ${quote(volumePath)}`, () =>
    inspectEntry(volume.handle, TARGET_NAME),
  );
  try {
    switch (state.kind) {
      case "missing":
        throw notFound(volumePath, "it does not exist");
      case "symlink":
        throw notFound(volumePath, "it is a symbolic link");
      case "not-directory":
        throw notFound(volumePath, "it is not a directory");
    }
    const driverName = (await volumeRecord(volume, volumePath))?.driverName;
    if (driverName !== undefined && driverName !== options.pluginName) {
      throw notFound(volumePath, `it is a volume of driver ${quote(driverName)}`);
    }
    return {
      usage: usageOf(state.handle, volumePath),
      volumeCondition: condition(options.workloadApiSocketDir, volumePath, state),
    };
  } finally {
    release(state);
  }
}

function condition(socketDir: string, volumePath: string, state: DirectoryState): Condition {
  const abnormal = (message: string): Condition => ({ abnormal: true, message });
  if (!state.mountPoint) {
    return abnormal(
      `${volumePath} is not a mount point: the Workload API directory is not mounted`,
    );
  }
  const source = openSourceIfThere(socketDir);
  try {
    const problem = sourceProblem(socketDir, source);
    if (problem || !source) return abnormal(problem ?? "no Workload API directory");
    if (!sameInode(state.handle, source)) {
      return abnormal(
        `${volumePath} no longer shows the Workload API directory ${socketDir} (it was removed or replaced after the volume was published); publishing the volume again repairs it`,
      );
    }
  } finally {
    source?.close();
  }
  try {
    readdirSync(state.handle.path);
  } catch (error) {
    return abnormal(`cannot list ${volumePath}: ${(error as Error).message}`);
  }
  return { abnormal: false, message: `the Workload API directory ${socketDir} is mounted` };
}

/** Bytes and inodes of the file system under the directory; older kubelets require both. */
function usageOf(directory: DirectoryHandle, path: string) {
  const stats: BigIntStatsFs = fs(`statfs ${quote(path)}`, () =>
    statfsSync(directory.path, { bigint: true }),
  );
  return [
    {
      unit: UsageUnit.BYTES,
      total: stats.blocks * stats.bsize,
      available: stats.bavail * stats.bsize,
      used: (stats.blocks - stats.bfree) * stats.bsize,
    },
    {
      unit: UsageUnit.INODES,
      total: stats.files,
      available: stats.ffree,
      used: stats.files - stats.ffree,
    },
  ];
}
