import { status } from "@grpc/grpc-js";
import {
  type Node,
  NodeServiceCapability_RPC_Type as NodeCapability,
} from "../gen/csi/v1/csi_pb.ts";
import type { FileOperations } from "../linux/file-operations.ts";
import type { Inspect } from "../linux/inspector.ts";
import type { Mounter } from "../linux/mounter.ts";
import type { ServiceHandlers } from "../rpc/adapter.ts";
import { adoptPublished } from "./adoption.ts";
import { type AuditSink, audited } from "./audit.ts";
import { PublishedVolumes, type VolumeCounts } from "./census.ts";
import { failedPrecondition, fsProblem, invalid, notFound, quote, refused } from "./errors.ts";
import {
  type Labeller,
  NO_EVENTS,
  type NodeEvents,
  type NodeHost,
  type Volume,
  VolumePathError,
} from "./host.ts";
import { podUidOf } from "./kubelet.ts";
import { KeyedMutex } from "./locks.ts";
import { Machine } from "./machine.ts";
import { type PodPolicy, podIdentity } from "./policy.ts";
import { Publisher } from "./publish.ts";
import { RecursiveBinds } from "./recursive.ts";
import type { SourceOptions } from "./source.ts";
import { VolumeStats } from "./stats.ts";
import { Unpublisher } from "./unpublish.ts";
import { validatePublish, validateUnpublish, validateVolumeStats } from "./validate.ts";

/** What the node service is built from: its settings and the parts it works with. */
export interface NodeConfig {
  nodeId: string;
  pluginName: string;
  /** The directory that holds the Workload API socket (absolute). */
  workloadApiSocketDir: string;
  /** Follow symbolic links on its path (--allow-symlinked-socket-dir). */
  allowSymlinkedSocketDir: boolean;
  /**
   * Bind the directory with every mount below it, and keep later mounts there propagating to the
   * targets (--recursive-bind).
   */
  recursiveBind: boolean;
  /** With recursiveBind: read-write mounts below the directory are bound too. */
  allowWritableSubmounts: boolean;
  /** Runs `mount` and `umount`. */
  mounter: Mounter;
  /** Runs the looks into the Workload API directory off the event loop, with a deadline. */
  inspector: Inspect<Pick<FileOperations, "statfs" | "listable">>;
  /** Sets SELinux labels in the Workload API directory; none when the driver does not. */
  labeller?: Labeller;
  /** Which pods may have the volume (--allow); every pod when absent. */
  policy?: PodPolicy;
  /** Told of failures, a removed source and every publish and unpublish. */
  events?: NodeEvents;
  /** The machine; this one by default (./machine.ts). Unit tests give a stand-in. */
  host?: NodeHost;
}

/** A node service config that cannot work (a bug in the caller: settings are checked before). */
export class NodeConfigError extends Error {
  override name = "NodeConfigError";
}

function checkConfig(config: NodeConfig): void {
  if (config.nodeId === "") throw new NodeConfigError("nodeId is empty");
  if (config.pluginName === "") throw new NodeConfigError("pluginName is empty");
  if (!config.workloadApiSocketDir.startsWith("/")) {
    throw new NodeConfigError(
      `workloadApiSocketDir ${quote(config.workloadApiSocketDir)} is not an absolute path`,
    );
  }
  if (config.allowWritableSubmounts && !config.recursiveBind) {
    throw new NodeConfigError("allowWritableSubmounts applies only with recursiveBind");
  }
}

/**
 * The CSI Node service: bind-mounts the Workload API socket directory into pods.
 *
 * Every call is validated, then opens the target's volume directory once, without following
 * links below the kubelet root, and from then on works through descriptors (see
 * ../linux/descriptors.ts): what it checked is what it mounts on, unmounts and removes, whatever
 * happens to the paths meanwhile. Calls for one volume run one at a time; the steps of each are
 * in publish.ts, unpublish.ts and stats.ts.
 */
export class NodeService {
  private readonly host: NodeHost;
  private readonly events: NodeEvents;
  private readonly source: SourceOptions;
  private readonly audit: AuditSink;
  private readonly locks = new KeyedMutex();
  /** Volumes published now, by volume key, as far as this process knows (see adoptPublished). */
  private readonly published: PublishedVolumes;
  private readonly publisher: Publisher;
  private readonly unpublisher: Unpublisher;
  private readonly volumeStats: VolumeStats;

  constructor(private readonly config: NodeConfig) {
    checkConfig(config);
    const events = config.events ?? NO_EVENTS;
    const { mounter, pluginName, workloadApiSocketDir } = config;
    this.events = events;
    this.audit = (record) => events.audit(record);
    this.source = {
      workloadApiSocketDir,
      allowSymlinkedSocketDir: config.allowSymlinkedSocketDir,
      onSourceRemoved: (problem) => events.sourceRemoved(problem),
    };
    this.host = config.host ?? new Machine(this.source);
    const recursive = config.recursiveBind
      ? new RecursiveBinds(mounter, events, workloadApiSocketDir, config.allowWritableSubmounts)
      : undefined;
    this.unpublisher = new Unpublisher(this.host, mounter, events, pluginName, recursive);
    this.publisher = new Publisher({
      host: this.host,
      mounter,
      events,
      unpublisher: this.unpublisher,
      labeller: config.labeller,
      recursive,
      pluginName,
      workloadApiSocketDir,
    });
    this.volumeStats = new VolumeStats(
      this.host,
      config.inspector,
      pluginName,
      workloadApiSocketDir,
    );
    this.published = new PublishedVolumes(this.source);
  }

  handlers(): ServiceHandlers<typeof Node> {
    return {
      nodePublishVolume: async (req) => {
        const pod = podIdentity(req.volumeContext);
        const auditedPod = { uid: podUidOf(req.targetPath), ...pod };
        return audited(this.audit, "publish", req.volumeId, auditedPod, async () => {
          validatePublish(req);
          // Before anything is touched: a pod refused gets neither a mount nor a directory.
          this.admit(pod);
          using volume = this.openVolume(req.targetPath, "publish");
          await this.locks.run(volume.key, () =>
            this.publisher.publish(req.volumeId, req.targetPath, volume),
          );
          if (!this.published.has(volume.key)) this.hold(volume);
          return {};
        });
      },
      nodeUnpublishVolume: async (req) => {
        const pod = { uid: podUidOf(req.targetPath) };
        return audited(this.audit, "unpublish", req.volumeId, pod, async () => {
          validateUnpublish(req);
          using volume = this.openVolume(req.targetPath, "unpublish");
          if (!volume) return {};
          await this.locks.run(volume.key, () =>
            this.unpublisher.unpublish(req.targetPath, volume),
          );
          this.published.delete(volume.key);
          return {};
        });
      },
      nodeGetVolumeStats: async (req) => {
        validateVolumeStats(req);
        using volume = this.openVolume(req.volumePath, "volume stats");
        // Awaited here: `using` closes the volume directory when this function returns.
        return await this.locks.run(volume.key, () =>
          this.volumeStats.stats(req.volumePath, volume),
        );
      },
      nodeGetCapabilities: async () => ({
        capabilities: [NodeCapability.VOLUME_CONDITION, NodeCapability.GET_VOLUME_STATS].map(
          (type) => ({ type: { case: "rpc" as const, value: { type } } }),
        ),
      }),
      // No volume limit: every pod on the node may have the volume.
      nodeGetInfo: async () => ({ nodeId: this.config.nodeId, maxVolumesPerNode: 0n }),
    };
  }

  /** What the published volumes' targets show now (see census.ts). */
  volumeCounts(): Promise<VolumeCounts> {
    return this.published.count();
  }

  /**
   * Looks at the Workload API directory as a publish would, so that a directory removed on the
   * node is noticed (NodeEvents.sourceRemoved) without waiting for a publish; says what a publish
   * would answer, or undefined when it would go ahead.
   */
  checkSource(): { code: status; problem: string } | undefined {
    const source = this.host.openSource();
    if (!source.ok) return source;
    source.dir.close();
    return undefined;
  }

  /** Counts the volumes published before this process started (see adoption.ts). */
  async adoptPublished(): Promise<void> {
    for (const [key, handle] of await adoptPublished(this.source)) {
      this.published.add(key, handle);
    }
  }

  /** Refuses a pod the policy does not admit, or cannot tell without the pod's identity. */
  private admit(pod: ReturnType<typeof podIdentity>): void {
    const decision = this.config.policy?.decide(pod);
    if (!decision || decision.allowed) return;
    const code =
      decision.reason === "not-allowed" ? status.PERMISSION_DENIED : status.FAILED_PRECONDITION;
    throw refused(code, decision.message);
  }

  /**
   * Keeps a handle of its own on a published volume's directory (`volume`'s is closed when the
   * call returns), for the census. Should no descriptor be left, the volume goes uncounted
   * rather than its publish failing after the mount.
   */
  private hold(volume: Volume): void {
    const handle = volume.hold();
    if (handle) this.published.add(volume.key, handle);
  }

  /**
   * The target's volume directory, held open, or undefined when unpublish finds none. A missing
   * directory or a link on the way answers as each call must.
   */
  private openVolume(targetPath: string, operation: "publish" | "volume stats"): Volume;
  private openVolume(targetPath: string, operation: "unpublish"): Volume | undefined;
  private openVolume(
    targetPath: string,
    operation: "publish" | "unpublish" | "volume stats",
  ): Volume | undefined {
    try {
      return this.host.openVolume(targetPath);
    } catch (error) {
      if (!(error instanceof VolumePathError)) {
        throw fsProblem(
          `${operation}: opening the volume directory of ${quote(targetPath)}`,
          error,
        );
      }
      if (operation === "volume stats") throw notFound(targetPath, error.problem);
      if (error.kind !== "missing") {
        throw invalid(`target_path ${quote(targetPath)} ${error.problem}; refusing to use it`);
      }
      // Never published, or already cleaned up: CSI asks unpublish for OK.
      if (operation === "unpublish") return undefined;
      throw failedPrecondition(
        `the volume directory of target_path ${quote(targetPath)} does not exist (the kubelet creates it before publishing)`,
      );
    }
  }
}
