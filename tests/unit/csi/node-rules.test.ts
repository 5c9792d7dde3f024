import { describe, expect, test } from "bun:test";
import { create } from "@bufbuild/protobuf";
import { status } from "@grpc/grpc-js";
import { type LabelOutcome, VolumePathError } from "../../../src/csi/host.ts";
import { type NodeConfig, NodeService } from "../../../src/csi/node.ts";
import { PodPolicy } from "../../../src/csi/policy.ts";
import {
  NodeServiceCapability_RPC_Type as NodeCapability,
  NodeGetVolumeStatsRequestSchema,
  type NodePublishVolumeRequest,
  VolumeUsage_Unit,
} from "../../../src/gen/csi/v1/csi_pb.ts";
import type { FileOperations } from "../../../src/linux/file-operations.ts";
import { type Inspect, InspectionError, InspectionTimeout } from "../../../src/linux/inspector.ts";
import { MountCommandError } from "../../../src/linux/mounter.ts";
import { RpcError } from "../../../src/rpc/status.ts";
import { podVolume, publishRequest, unpublishRequest } from "../../helpers/kubelet.ts";
import {
  DEV,
  errno,
  labellerAnswering,
  RecordedEvents,
  SOURCE,
  SOURCE_MISSING,
  StandInMachine,
  type StandInVolume,
  USAGE,
} from "./stand-in.ts";

/**
 * The node service's rules, one table per CSI node method: what the machine looks like, the
 * request, and the gRPC code and message wanted, with what the mounter was asked to do. The
 * machine is a stand-in (./stand-in.ts); the end-to-end tests prove the same rules with the real
 * binary and real mounts.
 */

const DRIVER = "csi.spiffe.io";
const SOCKET_DIR = "/run/spire/agent-sockets";
const volume = podVolume("/var/lib/kubelet");
const TARGET = volume.targetPath;
const VOLUME_ID = volume.volumeId;
const OURS = { driverName: DRIVER, volumeHandle: VOLUME_ID };

type StatfsOrListable = Pick<FileOperations, "statfs" | "listable">;

/** An inspector that answers statfs and listable as the case says, in this process. */
function inspectorAnswering(answer: { statfs?: Error; listable?: Error } = {}) {
  const inspector: Inspect<StatfsOrListable> = {
    async run(op) {
      if (op === "statfs") {
        if (answer.statfs) throw answer.statfs;
        return USAGE;
      }
      if (answer.listable) throw answer.listable;
      return true;
    },
  } as Inspect<StatfsOrListable>;
  return inspector;
}

interface Setup {
  machine: StandInMachine;
  events: RecordedEvents;
  handlers: ReturnType<NodeService["handlers"]>;
}

function setUp(config: Partial<NodeConfig> = {}, given?: (machine: StandInMachine) => void): Setup {
  const machine = new StandInMachine();
  given?.(machine);
  const events = new RecordedEvents();
  const service = new NodeService({
    nodeId: "node-1",
    pluginName: DRIVER,
    workloadApiSocketDir: SOCKET_DIR,
    allowSymlinkedSocketDir: false,
    recursiveBind: false,
    allowWritableSubmounts: false,
    mounter: machine,
    inspector: inspectorAnswering(),
    host: machine,
    events,
    ...config,
  });
  return { machine, events, handlers: service.handlers() };
}

/** The call's status code and message; OK and "" when it succeeds. */
async function outcome(call: Promise<unknown>): Promise<[status, string]> {
  try {
    await call;
    return [status.OK, ""];
  } catch (error) {
    if (!(error instanceof RpcError)) throw error;
    return [error.code, error.message];
  }
}

/** A target directory with mounts showing these inodes, bottom first. */
function mountedTarget(machine: StandInMachine, ...roots: (typeof SOURCE)[]): StandInVolume {
  return {
    record: OURS,
    target: {
      kind: "directory",
      inode: machine.newInode(),
      entries: 0,
      mounts: roots.map((root, index) => ({ mountId: 900 + index, root })),
    },
  };
}

function emptyTarget(machine: StandInMachine, entries = 0): StandInVolume {
  return {
    record: OURS,
    target: { kind: "directory", inode: machine.newInode(), entries, mounts: [] },
  };
}

/** The kubelet's record says ours; at the target is nothing, a link, or a file. */
function targetIs(kind: "missing" | "symlink" | "not-directory") {
  return (machine: StandInMachine) => machine.volume(TARGET, { record: OURS, target: { kind } });
}

/** The walk to the volume directory stops at `path`. */
function walkStopsAt(kind: "symlink" | "not-directory", path: string) {
  return (machine: StandInMachine) =>
    machine.volume(TARGET, { walk: new VolumePathError(kind, path), target: { kind: "missing" } });
}

/** A published volume. */
function published(machine: StandInMachine) {
  machine.volume(TARGET, mountedTarget(machine, SOURCE));
}

/** A published volume, and the Workload API directory gone since. */
function publishedWithoutSource(machine: StandInMachine) {
  machine.source = SOURCE_MISSING;
  machine.volume(TARGET, mountedTarget(machine, SOURCE));
}

const FAILED = new MountCommandError(["mount", "--bind"], 32, "mount: permission denied", false);
const HUNG = new MountCommandError(["mount", "--bind"], null, "", true);
const REMOVED_SOURCE = { dev: DEV, ino: 999, nlink: 0 };

interface PublishCase {
  name: string;
  given?: (machine: StandInMachine) => void;
  config?: Partial<NodeConfig>;
  request?: (request: NodePublishVolumeRequest) => void;
  code: status;
  message?: string;
  /** What the mounter was asked, in order. */
  calls?: string[];
  /** The target afterwards: how many mounts, and whether they show the source. */
  after?: "published" | "missing" | "unmounted" | "unchanged";
}

const publishCases: PublishCase[] = [
  {
    name: "a new volume: the target is created and bound",
    given: targetIs("missing"),
    code: status.OK,
    calls: ["bind"],
    after: "published",
  },
  {
    name: "no record beside the target (an older kubelet): bound",
    given: (m) => m.volume(TARGET, { target: { kind: "missing" } }),
    code: status.OK,
    calls: ["bind"],
    after: "published",
  },
  {
    name: "an empty target directory the kubelet made: bound",
    given: (m) => m.volume(TARGET, emptyTarget(m)),
    code: status.OK,
    calls: ["bind"],
    after: "published",
  },
  {
    name: "published already (a kubelet restart): nothing is mounted again",
    given: published,
    code: status.OK,
    calls: [],
    after: "published",
  },
  {
    name: "a stale bind of a removed directory: unmounted, then bound again",
    given: (m) => m.volume(TARGET, mountedTarget(m, REMOVED_SOURCE)),
    code: status.OK,
    calls: ["unmount", "bind"],
    after: "published",
  },
  {
    name: "two stale binds stacked: both unmounted, then one bind",
    given: (m) => m.volume(TARGET, mountedTarget(m, REMOVED_SOURCE, REMOVED_SOURCE)),
    code: status.OK,
    calls: ["unmount", "unmount", "bind"],
    after: "published",
  },
  {
    name: "the volume directory missing",
    code: status.FAILED_PRECONDITION,
    message: "does not exist (the kubelet creates it before publishing)",
    calls: [],
  },
  {
    name: "a symbolic link below the kubelet root",
    given: walkStopsAt("symlink", "/var/lib/kubelet/pods"),
    code: status.INVALID_ARGUMENT,
    message: 'passes through a symbolic link below the kubelet root ("/var/lib/kubelet/pods")',
    calls: [],
  },
  {
    name: "a file on the way to the volume directory",
    given: walkStopsAt("not-directory", "/var/lib/kubelet/pods"),
    code: status.INVALID_ARGUMENT,
    message: 'passes through "/var/lib/kubelet/pods", which is not a directory',
  },
  {
    name: "a target that is a symbolic link",
    given: targetIs("symlink"),
    code: status.FAILED_PRECONDITION,
    message: "is a symbolic link; refusing to use it",
    calls: [],
  },
  {
    name: "a target that is a file",
    given: targetIs("not-directory"),
    code: status.FAILED_PRECONDITION,
    message: "exists and is not a directory",
    calls: [],
  },
  {
    name: "a target directory with contents, not a mount point",
    given: (m) => m.volume(TARGET, emptyTarget(m, 3)),
    code: status.FAILED_PRECONDITION,
    message: "is a directory with contents and not a mount point; refusing to mount over it",
    calls: [],
    after: "unchanged",
  },
  {
    name: "a target of another volume",
    given: (m) =>
      m.volume(TARGET, {
        record: { driverName: DRIVER, volumeHandle: "csi-other" },
        target: { kind: "missing" },
      }),
    code: status.ALREADY_EXISTS,
    message: `belongs to volume "csi-other", not "${VOLUME_ID}"`,
    calls: [],
  },
  {
    name: "a target of another driver's volume",
    given: (m) =>
      m.volume(TARGET, {
        record: { driverName: "other.csi.example", volumeHandle: VOLUME_ID },
        target: { kind: "missing" },
      }),
    code: status.FAILED_PRECONDITION,
    message: 'belongs to a volume of driver "other.csi.example"',
    calls: [],
  },
  {
    name: "a mount of another driver's at the target",
    given: (m) =>
      m.volume(TARGET, {
        ...mountedTarget(m, { dev: 77, ino: 3, nlink: 2 }),
        record: { volumeHandle: VOLUME_ID },
      }),
    code: status.FAILED_PRECONDITION,
    message: "is a mount point (mount id 900) that is not this driver's; refusing to unmount it",
    calls: [],
    after: "unchanged",
  },
  {
    name: "the kubelet's record unreadable",
    given: (m) => m.volume(TARGET, { record: errno("EIO"), target: { kind: "missing" } }),
    code: status.INTERNAL,
    message: "reading the kubelet's record beside",
  },
  {
    name: "the Workload API directory missing",
    given: (m) => {
      m.source = SOURCE_MISSING;
      m.volume(TARGET, { record: OURS, target: { kind: "missing" } });
    },
    code: status.UNAVAILABLE,
    message: "does not exist",
    calls: [],
    after: "missing",
  },
  {
    name: "the Workload API directory's path refused",
    given: (m) => {
      m.source = { ok: false, code: status.FAILED_PRECONDITION, problem: "is refused: a link" };
      m.volume(TARGET, { record: OURS, target: { kind: "missing" } });
    },
    code: status.FAILED_PRECONDITION,
    message: "is refused: a link",
    calls: [],
  },
  {
    name: "a pod the policy does not allow",
    config: { policy: PodPolicy.parse(["spire-workloads"]) },
    given: targetIs("missing"),
    code: status.PERMISSION_DENIED,
    message: "default",
    calls: [],
    after: "missing",
  },
  {
    name: "a pod the policy cannot judge: no pod information",
    config: { policy: PodPolicy.parse(["spire-workloads"]) },
    given: targetIs("missing"),
    request: (request) => {
      request.volumeContext = { "csi.storage.k8s.io/ephemeral": "true" };
    },
    code: status.FAILED_PRECONDITION,
    calls: [],
  },
  {
    name: "labels refused on an enforcing node",
    config: {
      labeller: labellerAnswering({ kind: "refused", problem: "cannot label: read-only" }),
    },
    given: targetIs("missing"),
    code: status.FAILED_PRECONDITION,
    message: "cannot label: read-only",
    calls: [],
  },
  {
    name: "labelling best effort on a permissive node: bound",
    config: { labeller: labellerAnswering({ kind: "best-effort", problem: "not labelled" }) },
    given: targetIs("missing"),
    code: status.OK,
    calls: ["bind"],
    after: "published",
  },
  {
    name: "labelling did not answer",
    config: { labeller: labellerAnswering({ kind: "unknown", problem: "no answer within 5 s" }) },
    given: targetIs("missing"),
    code: status.UNAVAILABLE,
    message: "no answer within 5 s",
    calls: [],
  },
  {
    name: "mount fails: the directory it created is removed again",
    given: (m) => {
      m.volume(TARGET, { record: OURS, target: { kind: "missing" } });
      m.fail.bind = FAILED;
    },
    code: status.INTERNAL,
    message: "mount: permission denied",
    calls: ["bind"],
    after: "missing",
  },
  {
    name: "mount hangs and is killed",
    given: (m) => {
      m.volume(TARGET, emptyTarget(m));
      m.fail.bind = HUNG;
    },
    code: status.DEADLINE_EXCEEDED,
    message: "did not finish in time and was killed",
    calls: ["bind"],
    after: "unchanged",
  },
  {
    name: "the target moved away while mount ran: the bind is taken back",
    given: (m) => m.volume(TARGET, { ...emptyTarget(m), moved: true }),
    code: status.FAILED_PRECONDITION,
    message: "was moved or removed while in use; refusing to use it",
    calls: [],
  },
  {
    name: "a stale mount that umount does not remove",
    given: (m) => {
      m.volume(TARGET, mountedTarget(m, REMOVED_SOURCE));
      m.fail.unmountLeavesMount = true;
    },
    code: status.INTERNAL,
    message: "umount reported success, but",
    calls: ["unmount"],
  },
];

describe("NodePublishVolume", () => {
  for (const c of publishCases) {
    test(`${c.name}: ${status[c.code]}`, async () => {
      const { machine, handlers, events } = setUp(c.config, c.given);
      const request = publishRequest(volume);
      c.request?.(request);
      expectAnswer(c, machine, await outcome(handlers.nodePublishVolume(request)));
      expect(events.seen.at(-1)).toStartWith("audit:publish:");
    });
  }

  test("a refused publish is audited as refused, a failed one as failed", async () => {
    const refused = setUp({ policy: PodPolicy.parse(["spire-workloads"]) }, (m) =>
      m.volume(TARGET, { record: OURS, target: { kind: "missing" } }),
    );
    await outcome(refused.handlers.nodePublishVolume(publishRequest(volume)));
    expect(refused.events.seen).toEqual(["audit:publish:refused"]);
    const failed = setUp({}, (m) => {
      m.volume(TARGET, { record: OURS, target: { kind: "missing" } });
      m.fail.bind = FAILED;
    });
    await outcome(failed.handlers.nodePublishVolume(publishRequest(volume)));
    expect(failed.events.seen).toEqual(["mountFailed:mount", "audit:publish:failed"]);
  });

  test("a label failure is counted by the node's mode", async () => {
    for (const [outcome_, counted] of [
      [{ kind: "refused", problem: "x" }, "labelFailed:enforcing"],
      [{ kind: "best-effort", problem: "x" }, "labelFailed:permissive"],
    ] as [LabelOutcome, string][]) {
      const { handlers, events } = setUp({ labeller: labellerAnswering(outcome_) }, (m) =>
        m.volume(TARGET, { record: OURS, target: { kind: "missing" } }),
      );
      await outcome(handlers.nodePublishVolume(publishRequest(volume)));
      expect(events.seen[0]).toBe(counted);
    }
  });
});

/**
 * The call answered the case's code and message, asked the mounter what the case says, left the
 * target as the case says, and closed every handle it opened.
 */
function expectAnswer(
  c: PublishCase | UnpublishCase,
  machine: StandInMachine,
  [code, message]: [status, string],
): void {
  expect({ code: status[code], message }).toMatchObject({
    code: status[c.code],
    message: expect.stringContaining(c.message ?? ""),
  });
  if (c.calls) expect(machine.calls.map(([call]) => call)).toEqual(c.calls);
  if (c.after) expect(targetAfter(machine)).toBe(c.after === "unchanged" ? before(c) : c.after);
  expect(machine.openHandles).toBe(0);
}

/** What the target held before the case, for "unchanged". */
function before(c: PublishCase | UnpublishCase): string {
  const machine = new StandInMachine();
  c.given?.(machine);
  return targetAfter(machine);
}

function targetAfter(machine: StandInMachine): string {
  const target = machine.volumes.get(TARGET)?.target;
  if (!target || target.kind === "missing") return "missing";
  if (target.kind !== "directory") return target.kind;
  const top = target.mounts.at(-1);
  if (!top) return target.entries > 0 ? `directory with ${target.entries} entries` : "unmounted";
  const shows = top.root === SOURCE ? "published" : `mounted ${top.root.ino}`;
  return target.mounts.length > 1 ? `${shows} x${target.mounts.length}` : shows;
}

interface UnpublishCase {
  name: string;
  given?: (machine: StandInMachine) => void;
  code: status;
  message?: string;
  calls?: string[];
  after?: "missing" | "unchanged";
}

const unpublishCases: UnpublishCase[] = [
  {
    name: "a published volume: unmounted and removed",
    given: published,
    code: status.OK,
    calls: ["unmount"],
    after: "missing",
  },
  {
    name: "binds stacked by an older driver: all unmounted",
    given: (m) => m.volume(TARGET, mountedTarget(m, SOURCE, SOURCE, SOURCE)),
    code: status.OK,
    calls: ["unmount", "unmount", "unmount"],
    after: "missing",
  },
  {
    name: "a stale bind of a removed directory, the record says ours",
    given: (m) => m.volume(TARGET, mountedTarget(m, { dev: 12, ino: 7, nlink: 0 })),
    code: status.OK,
    calls: ["unmount"],
    after: "missing",
  },
  {
    name: "a stale bind without a record, a removed directory on the source's device",
    given: (m) => m.volume(TARGET, { ...mountedTarget(m, REMOVED_SOURCE), record: undefined }),
    code: status.OK,
    calls: ["unmount"],
    after: "missing",
  },
  {
    name: "the Workload API directory gone: the bind still goes",
    given: publishedWithoutSource,
    code: status.OK,
    calls: ["unmount"],
    after: "missing",
  },
  {
    name: "the Workload API directory cannot be opened at all: the bind still goes",
    given: (m) => {
      m.source = errno("EACCES", "permission denied, fstat");
      m.volume(TARGET, mountedTarget(m, SOURCE));
    },
    code: status.OK,
    calls: ["unmount"],
    after: "missing",
  },
  {
    name: "after a node reboot: no mount, the directory is removed",
    given: (m) => m.volume(TARGET, emptyTarget(m)),
    code: status.OK,
    calls: [],
    after: "missing",
  },
  {
    name: "never published: no volume directory",
    code: status.OK,
    calls: [],
  },
  {
    name: "already unpublished: no target",
    given: targetIs("missing"),
    code: status.OK,
    calls: [],
    after: "missing",
  },
  {
    name: "a symbolic link below the kubelet root",
    given: walkStopsAt("symlink", "/var/lib/kubelet/pods"),
    code: status.INVALID_ARGUMENT,
    message: "passes through a symbolic link below the kubelet root",
  },
  {
    name: "a target that is a symbolic link",
    given: targetIs("symlink"),
    code: status.FAILED_PRECONDITION,
    message: "is a symbolic link; refusing to unmount or remove it",
    calls: [],
  },
  {
    name: "a target that is a file",
    given: targetIs("not-directory"),
    code: status.FAILED_PRECONDITION,
    message: "is not a directory; refusing to remove it",
    calls: [],
  },
  {
    name: "a target directory with contents, not a mount point",
    given: (m) => m.volume(TARGET, emptyTarget(m, 2)),
    code: status.FAILED_PRECONDITION,
    message: "is not a mount point and is not empty; refusing to remove it",
    after: "unchanged",
  },
  {
    name: "a mount of another driver's",
    given: (m) =>
      m.volume(TARGET, {
        ...mountedTarget(m, { dev: 77, ino: 3, nlink: 2 }),
        record: { driverName: "other.csi.example" },
      }),
    code: status.FAILED_PRECONDITION,
    message: "that is not this driver's; refusing to unmount it",
    calls: [],
    after: "unchanged",
  },
  {
    name: "a live foreign mount without a record",
    given: (m) =>
      m.volume(TARGET, { ...mountedTarget(m, { dev: DEV, ino: 3, nlink: 2 }), record: undefined }),
    code: status.FAILED_PRECONDITION,
    message: "that is not this driver's",
    calls: [],
    after: "unchanged",
  },
  {
    name: "umount fails",
    given: (m) => {
      m.volume(TARGET, mountedTarget(m, SOURCE));
      m.fail.unmount = new MountCommandError(["umount"], 32, "umount: target is busy", false);
    },
    code: status.INTERNAL,
    message: "umount: target is busy",
    calls: ["unmount"],
    after: "unchanged",
  },
  {
    name: "umount hangs and is killed",
    given: (m) => {
      m.volume(TARGET, mountedTarget(m, SOURCE));
      m.fail.unmount = new MountCommandError(["umount"], null, "", true);
    },
    code: status.DEADLINE_EXCEEDED,
    message: "did not finish in time and was killed",
  },
];

describe("NodeUnpublishVolume", () => {
  for (const c of unpublishCases) {
    test(`${c.name}: ${status[c.code]}`, async () => {
      const { machine, handlers, events } = setUp({}, c.given);
      const answer = await outcome(handlers.nodeUnpublishVolume(unpublishRequest(volume)));
      expectAnswer(c, machine, answer);
      expect(events.seen.at(-1)).toBe(
        `audit:unpublish:${c.code === status.OK ? "removed" : "failed"}`,
      );
    });
  }
});

interface StatsCase {
  name: string;
  given?: (machine: StandInMachine) => void;
  inspector?: { statfs?: Error; listable?: Error };
  code: status;
  message?: string;
  /** The volume condition's message when the call succeeds; abnormal when it starts with "!". */
  condition?: string;
}

const statsCases: StatsCase[] = [
  {
    name: "a published volume",
    given: published,
    code: status.OK,
    condition: `the Workload API directory ${SOCKET_DIR} is mounted`,
  },
  {
    name: "unmounted behind the driver's back",
    given: (m) => m.volume(TARGET, emptyTarget(m)),
    code: status.OK,
    condition: "!is not a mount point",
  },
  {
    name: "the Workload API directory replaced after publishing",
    given: (m) => m.volume(TARGET, mountedTarget(m, REMOVED_SOURCE)),
    code: status.OK,
    condition: "!no longer shows the Workload API directory",
  },
  {
    name: "the Workload API directory missing",
    given: publishedWithoutSource,
    code: status.OK,
    condition: "!does not exist",
  },
  {
    name: "the target cannot be listed",
    given: published,
    inspector: { listable: new InspectionError("EACCES: permission denied", "EACCES") },
    code: status.OK,
    condition: "!cannot list",
  },
  {
    name: "no volume directory",
    code: status.NOT_FOUND,
    message: "no volume is published at volume_path",
  },
  {
    name: "no target",
    given: targetIs("missing"),
    code: status.NOT_FOUND,
    message: "it does not exist",
  },
  {
    name: "a target that is a symbolic link",
    given: targetIs("symlink"),
    code: status.NOT_FOUND,
    message: "it is a symbolic link",
  },
  {
    name: "a target that is a file",
    given: targetIs("not-directory"),
    code: status.NOT_FOUND,
    message: "it is not a directory",
  },
  {
    name: "another driver's volume",
    given: (m) =>
      m.volume(TARGET, { ...mountedTarget(m, SOURCE), record: { driverName: "other.example" } }),
    code: status.NOT_FOUND,
    message: 'it is a volume of driver "other.example"',
  },
  {
    name: "statfs does not answer in time",
    given: published,
    inspector: { statfs: new InspectionTimeout("statfs", 5000, []) },
    code: status.UNAVAILABLE,
    message: "no answer within 5 s",
  },
  {
    name: "statfs fails",
    given: published,
    inspector: { statfs: new InspectionError("EIO: i/o error", "EIO") },
    code: status.INTERNAL,
    message: "EIO: i/o error",
  },
];

describe("NodeGetVolumeStats", () => {
  for (const c of statsCases) {
    test(`${c.name}: ${status[c.code]}`, async () => {
      const { machine, handlers } = setUp({ inspector: inspectorAnswering(c.inspector) }, c.given);
      const request = create(NodeGetVolumeStatsRequestSchema, {
        volumeId: VOLUME_ID,
        volumePath: TARGET,
      });
      let response: Awaited<ReturnType<typeof handlers.nodeGetVolumeStats>> | undefined;
      const [code, message] = await outcome(
        handlers.nodeGetVolumeStats(request).then((answer) => {
          response = answer;
        }),
      );
      expect({ code: status[code], message }).toMatchObject({
        code: status[c.code],
        message: expect.stringContaining(c.message ?? ""),
      });
      expect(machine.calls).toEqual([]);
      expect(machine.openHandles).toBe(0);
      if (c.code !== status.OK) return;
      const condition = c.condition ?? "";
      expect(response?.volumeCondition).toMatchObject({
        abnormal: condition.startsWith("!"),
        message: expect.stringContaining(condition.replace(/^!/, "")),
      });
      expect(response?.usage).toMatchObject([
        { unit: VolumeUsage_Unit.BYTES, total: 409600n, available: 204800n, used: 163840n },
        { unit: VolumeUsage_Unit.INODES, total: 1000n, available: 900n, used: 100n },
      ]);
    });
  }
});

describe("NodeGetInfo and NodeGetCapabilities", () => {
  test("the node id, no volume limit, and stats with conditions", async () => {
    const { handlers } = setUp();
    // biome-ignore lint/suspicious/noExplicitAny: the handlers take the request message.
    const none = {} as any;
    expect(await handlers.nodeGetInfo(none)).toEqual({ nodeId: "node-1", maxVolumesPerNode: 0n });
    const { capabilities } = await handlers.nodeGetCapabilities(none);
    expect(capabilities?.map((c) => c.type?.value?.type)).toEqual([
      NodeCapability.VOLUME_CONDITION,
      NodeCapability.GET_VOLUME_STATS,
    ]);
  });
});

describe("the node service's config", () => {
  test.each([
    [{ nodeId: "" }, "nodeId is empty"],
    [{ pluginName: "" }, "pluginName is empty"],
    [{ workloadApiSocketDir: "run/spire" }, "is not an absolute path"],
    [{ allowWritableSubmounts: true }, "applies only with recursiveBind"],
  ])("%p is refused", (config, message) => {
    expect(() => setUp(config as Partial<NodeConfig>)).toThrow(message);
  });
});
