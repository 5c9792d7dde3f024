import { status } from "@grpc/grpc-js";
import {
  type Node,
  NodeServiceCapability_RPC_Type as NodeCapability,
} from "../gen/csi/v1/csi_pb.ts";
import { openDirectory } from "../linux/descriptors.ts";
import type { FileOperations } from "../linux/file-operations.ts";
import type { Inspect } from "../linux/inspector.ts";
import type { Mounter } from "../linux/mounter.ts";
import type { ServiceHandlers } from "../rpc/adapter.ts";
import { adoptPublished } from "./adoption.ts";
import { type AuditSink, audited } from "./audit.ts";
import { PublishedVolumes, type VolumeCounts } from "./census.ts";
import {
  failedPrecondition,
  internal,
  invalid,
  notFound,
  quote,
  refused,
  volumePathProblem,
} from "./errors.ts";
import { openVolumeDir, podUidOf, type VolumeDirectory, VolumePathError } from "./kubelet.ts";
import { KeyedMutex } from "./locks.ts";
import { type PodIdentity, type PodPolicy, podIdentity } from "./policy.ts";
import { publish } from "./publish.ts";
import { inspectSource, type SourceOptions } from "./source.ts";
import { volumeStats } from "./stats.ts";
import { unpublish } from "./unpublish.ts";
import { validatePublish, validateUnpublish, validateVolumeStats } from "./validate.ts";

/**
 * What labelling the Workload API directory came to (../selinux/labeller.ts says each kind): a
 * publish goes on when usable or best effort, fails when refused, answers UNAVAILABLE when unknown.
 */
export type LabelOutcome =
  | { kind: "usable" }
  | { kind: "best-effort" | "refused" | "unknown"; problem: string };

export interface NodeServiceOptions extends SourceOptions {
  nodeId: string;
  pluginName: string;
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
  /** Which pods may have the volume (--allow); every pod when absent. */
  policy?: PodPolicy;
  /** Told of every publish and unpublish: for which pod, and how it ended. */
  audit?: AuditSink;
}

/** Refuses a pod the policy does not admit, or cannot tell without the pod's identity. */
function admit(policy: PodPolicy | undefined, pod: PodIdentity): void {
  const decision = policy?.decide(pod);
  if (!decision || decision.allowed) return;
  const code =
    decision.reason === "not-allowed" ? status.PERMISSION_DENIED : status.FAILED_PRECONDITION;
  throw refused(code, decision.message);
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
  private readonly published: PublishedVolumes;

  constructor(private readonly options: NodeServiceOptions) {
    this.published = new PublishedVolumes(options.workloadApiSocketDir);
  }

  handlers(): ServiceHandlers<typeof Node> {
    const { options } = this;
    return {
      nodePublishVolume: async (req) => {
        const pod = podIdentity(req.volumeContext);
        const auditedPod = { uid: podUidOf(req.targetPath), ...pod };
        return audited(options.audit, "publish", req.volumeId, auditedPod, async () => {
          validatePublish(req);
          // Before anything is touched: a pod refused gets neither a mount nor a directory.
          admit(options.policy, pod);
          using volume = this.openVolume(req.targetPath, "publish");
          await this.locks.run(volume.key, () =>
            publish(options, req.volumeId, req.targetPath, volume),
          );
          if (!this.published.has(volume.key)) this.hold(volume);
          return {};
        });
      },
      nodeUnpublishVolume: async (req) => {
        const pod = { uid: podUidOf(req.targetPath) };
        return audited(options.audit, "unpublish", req.volumeId, pod, async () => {
          validateUnpublish(req);
          using volume = this.openVolume(req.targetPath, "unpublish");
          if (!volume) return {};
          await this.locks.run(volume.key, () => unpublish(options, req.targetPath, volume));
          this.published.delete(volume.key);
          return {};
        });
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

  /**
   * Keeps a handle of its own on a published volume's directory (`volume`'s is closed when the
   * call returns), for the census. Should no descriptor be left, the volume goes uncounted
   * rather than its publish failing after the mount.
   */
  private hold(volume: VolumeDirectory): void {
    try {
      this.published.add(volume.key, openDirectory(volume.handle.path));
    } catch {
      // Uncounted (see above).
    }
  }

  /** What the published volumes' targets show now (see census.ts). */
  volumeCounts(): Promise<VolumeCounts> {
    return this.published.count();
  }

  /**
   * Looks at the Workload API directory as a publish would, so that a directory removed on the
   * node is noticed (onSourceRemoved) without waiting for a publish; says what a publish would
   * answer, or undefined when it would go ahead.
   */
  checkSource(): { code: status; problem: string } | undefined {
    const source = inspectSource(this.options);
    if (!source.ok) return source;
    source.handle.close();
    return undefined;
  }

  /** Counts the volumes published before this process started (see adoption.ts). */
  async adoptPublished(): Promise<void> {
    for (const [key, handle] of await adoptPublished(this.options)) {
      this.published.add(key, handle);
    }
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
