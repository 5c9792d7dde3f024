import {
  type Node,
  NodeServiceCapability_RPC_Type as NodeCapability,
} from "../gen/csi/v1/csi_pb.ts";
import type { FileOperations } from "../linux/file-operations.ts";
import type { Inspect } from "../linux/inspector.ts";
import type { Mounter } from "../linux/mounter.ts";
import type { ServiceHandlers } from "../rpc/adapter.ts";
import type { LabelOutcome } from "../selinux/labeller.ts";
import { adoptPublished } from "./adoption.ts";
import {
  failedPrecondition,
  internal,
  invalid,
  notFound,
  quote,
  volumePathProblem,
} from "./errors.ts";
import { openVolumeDir, type VolumeDirectory, VolumePathError } from "./kubelet.ts";
import { KeyedMutex } from "./locks.ts";
import { publish } from "./publish.ts";
import { volumeStats } from "./stats.ts";
import { unpublish } from "./unpublish.ts";
import { validatePublish, validateUnpublish, validateVolumeStats } from "./validate.ts";

export interface NodeServiceOptions {
  nodeId: string;
  pluginName: string;
  workloadApiSocketDir: string;
  mounter: Mounter;
  /** Told of every `mount` or `umount` that failed (for metrics). */
  onMountFailure?: (operation: "mount" | "umount") => void;
  /**
   * Runs the calls into the Workload API directory (through a target that shows it) off the
   * event loop, bounded in time (../linux/inspector.ts).
   */
  inspector: Inspect<Pick<FileOperations, "statfs" | "listable">>;
  /**
   * Makes the Workload API directory usable by pods (SELinux labels), opening it at `dir`; says
   * what came of it (../selinux/labeller.ts).
   */
  labeller?: { ensure(dir: string): Promise<LabelOutcome> };
  /** Told of every publish whose labelling failed, by the node's mode (for metrics). */
  onLabelFailure?: (mode: "permissive" | "enforcing") => void;
  /**
   * Binds the directory with every mount below it, and keeps later mounts there propagating to
   * the targets (--recursive-bind). See ../../README.md, "File systems inside the directory".
   */
  recursiveBind?: boolean;
  /** With recursiveBind: read-write mounts below the directory are bound too. */
  allowWritableSubmounts?: boolean;
}

/**
 * The CSI Node service: bind-mounts the Workload API socket directory into pods.
 *
 * Every call is validated, then opens the target's volume directory once, without following
 * links below the kubelet root, and from then on works through descriptors (see
 * ../linux/descriptors.ts): what it checked is what it mounts on, unmounts and removes, whatever
 * happens to the paths meanwhile. Calls for one volume run one at a time; the work of each is in
 * publish.ts, unpublish.ts and stats.ts.
 */
export class NodeService {
  private readonly locks = new KeyedMutex();
  /** Volumes published now, by volume key, as far as this process knows (see adoptPublished). */
  private readonly published = new Set<string>();

  constructor(private readonly options: NodeServiceOptions) {}

  handlers(): ServiceHandlers<typeof Node> {
    const { options } = this;
    return {
      nodePublishVolume: async (req) => {
        validatePublish(req);
        using volume = this.openVolume(req.targetPath, "publish");
        await this.locks.run(volume.key, () =>
          publish(options, req.volumeId, req.targetPath, volume),
        );
        this.published.add(volume.key);
        return {};
      },
      nodeUnpublishVolume: async (req) => {
        validateUnpublish(req);
        using volume = this.openVolume(req.targetPath, "unpublish");
        if (!volume) return {};
        await this.locks.run(volume.key, () => unpublish(options, req.targetPath, volume));
        this.published.delete(volume.key);
        return {};
      },
      nodeGetVolumeStats: async (req) => {
        validateVolumeStats(req);
        using volume = this.openVolume(req.volumePath, "volume stats");
        // Awaited here: `using` closes the volume directory when this function returns.
        return await this.locks.run(volume.key, () => volumeStats(options, req.volumePath, volume));
      },
      nodeGetCapabilities: async () => ({
        capabilities: [NodeCapability.VOLUME_CONDITION, NodeCapability.GET_VOLUME_STATS].map(
          (type) => ({ type: { case: "rpc" as const, value: { type } } }),
        ),
      }),
      // No volume limit: every pod on the node may have the volume.
      nodeGetInfo: async () => ({ nodeId: options.nodeId, maxVolumesPerNode: 0n }),
    };
  }

  /** How many volumes are published now. */
  get publishedVolumes(): number {
    return this.published.size;
  }

  /** Counts the volumes published before this process started (see adoption.ts). */
  adoptPublished(): void {
    for (const key of adoptPublished(this.options.workloadApiSocketDir)) this.published.add(key);
  }

  /**
   * The target's volume directory, held open, or undefined when unpublish finds none. A missing
   * directory or a link on the way answers as each call must.
   */
  private openVolume(targetPath: string, operation: "publish" | "volume stats"): VolumeDirectory;
  private openVolume(targetPath: string, operation: "unpublish"): VolumeDirectory | undefined;
  private openVolume(
    targetPath: string,
    operation: "publish" | "unpublish" | "volume stats",
  ): VolumeDirectory | undefined {
    try {
      return openVolumeDir(targetPath);
    } catch (error) {
      if (!(error instanceof VolumePathError)) {
        throw internal(
          `${operation}: opening the volume directory of ${quote(targetPath)}: ${(error as Error).message}`,
          error,
        );
      }
      if (operation === "volume stats") throw notFound(targetPath, volumePathProblem(error));
      if (error.kind !== "missing") {
        throw invalid(
          `target_path ${quote(targetPath)} ${volumePathProblem(error)}; refusing to use it`,
        );
      }
      // Never published, or already cleaned up: CSI asks unpublish for OK.
      if (operation === "unpublish") return undefined;
      throw failedPrecondition(
        `the volume directory of target_path ${quote(targetPath)} does not exist (the kubelet creates it before publishing)`,
      );
    }
  }
}
