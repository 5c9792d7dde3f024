import type { MessageInitShape } from "@bufbuild/protobuf";
import {
  type NodeGetVolumeStatsResponseSchema,
  VolumeUsage_Unit as UsageUnit,
  type VolumeConditionSchema,
} from "../gen/csi/v1/csi_pb.ts";
import type { FileOperations, FileSystemUsage } from "../linux/file-operations.ts";
import { type Directory, type Inode, sameInode, type TargetDirectory } from "../linux/inspect.ts";
import { type Inspect, InspectionError } from "../linux/inspector.ts";
import { fs, internal, notFound, quote, unavailable } from "./errors.ts";
import type { NodeHost, Volume } from "./host.ts";
import { volumeRecord } from "./target.ts";

type Condition = MessageInitShape<typeof VolumeConditionSchema>;
type StatsResponse = MessageInitShape<typeof NodeGetVolumeStatsResponseSchema>;

/** NodeGetVolumeStats: the volume's condition and the usage of the file system under it. */
export class VolumeStats {
  constructor(
    private readonly host: NodeHost,
    /** Runs the looks at a target that shows the agent's directory off the event loop. */
    private readonly inspector: Inspect<Pick<FileOperations, "statfs" | "listable">>,
    private readonly pluginName: string,
    private readonly workloadApiSocketDir: string,
  ) {}

  async stats(volumePath: string, volume: Volume): Promise<StatsResponse> {
    using state = fs(`volume stats: inspecting ${quote(volumePath)}`, () => volume.target());
    switch (state.kind) {
      case "missing":
        throw notFound(volumePath, "it does not exist");
      case "symlink":
        throw notFound(volumePath, "it is a symbolic link");
      case "not-directory":
        throw notFound(volumePath, "it is not a directory");
    }
    const driverName = (await volumeRecord(volume, volumePath))?.driverName;
    if (driverName !== undefined && driverName !== this.pluginName) {
      throw notFound(volumePath, `it is a volume of driver ${quote(driverName)}`);
    }
    return {
      usage: await this.usageOf(state.dir, volumePath),
      volumeCondition: await this.condition(volumePath, state),
    };
  }

  private async condition(volumePath: string, state: TargetDirectory): Promise<Condition> {
    const socketDir = this.workloadApiSocketDir;
    const abnormal = (message: string): Condition => ({ abnormal: true, message });
    if (!state.mountPoint) {
      return abnormal(
        `${volumePath} is not a mount point: the Workload API directory is not mounted`,
      );
    }
    {
      const found = this.host.openSource();
      if (!found.ok) return abnormal(found.problem);
      using source = found.dir;
      if (!sameInode(state.dir, source)) {
        return abnormal(
          `${volumePath} no longer shows the Workload API directory ${socketDir} (it was removed or replaced after the volume was published); publishing the volume again repairs it`,
        );
      }
    }
    try {
      // The target shows the agent's directory: listing it runs off the event loop.
      await this.inspector.run("listable", { path: state.dir.sharedPath }, "listing");
    } catch (error) {
      if (!(error instanceof InspectionError)) throw error;
      return abnormal(`cannot list ${volumePath}: ${error.message}`);
    }
    return { abnormal: false, message: `the Workload API directory ${socketDir} is mounted` };
  }

  /** Bytes and inodes of the file system under the directory; older kubelets require both. */
  private async usageOf(directory: Directory, path: string) {
    let usage: FileSystemUsage;
    try {
      usage = await this.inspector.run(
        "statfs",
        { path: directory.sharedPath },
        `statfs ${quote(path)}`,
      );
    } catch (error) {
      if (!(error instanceof InspectionError)) throw error;
      // Hung: the kubelet asks again at its next round.
      if (error.code === "ETIMEDOUT" || error.code === "EAGAIN") throw unavailable(error.message);
      throw internal(error.message, error);
    }
    return usageReport(usage);
  }
}

/**
 * Why a published volume no longer serves the Workload API, as NodeGetVolumeStats and the
 * metrics (census.ts) tell it: a label value each.
 */
export const ABNORMAL_REASONS = [
  // The target is not a mount point: unmounted behind the driver's back.
  "not_mounted",
  // The Workload API directory does not exist.
  "source_missing",
  // The driver's own view of the Workload API directory is a removed one (source.ts).
  "source_stale",
  // The target shows another directory: the Workload API directory was removed or replaced
  // after the volume was published.
  "replaced",
  // The target cannot be listed.
  "unreadable",
  // The target is gone, or is no longer a directory (the census only: stats answers NOT_FOUND).
  "target_gone",
  // Its check did not finish in time (the census only).
  "unresponsive",
] as const;
export type AbnormalReason = (typeof ABNORMAL_REASONS)[number];

/** What a mounted target shows against the Workload API directory; undefined when all is well. */
export function mountProblem(
  mountPoint: boolean,
  target: Omit<Inode, "nlink">,
  source: Inode | undefined,
): AbnormalReason | undefined {
  if (!mountPoint) return "not_mounted";
  if (!source) return "source_missing";
  if (source.nlink === 0) return "source_stale";
  if (!sameInode(target, source)) return "replaced";
  return undefined;
}

function usageReport(usage: FileSystemUsage) {
  const stats = {
    bsize: BigInt(usage.bsize),
    blocks: BigInt(usage.blocks),
    bfree: BigInt(usage.bfree),
    bavail: BigInt(usage.bavail),
    files: BigInt(usage.files),
    ffree: BigInt(usage.ffree),
  };
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
