import { afterAll, describe, expect, test } from "bun:test";
import { join } from "node:path";
import { create } from "@bufbuild/protobuf";
import { status } from "@grpc/grpc-js";
import { startInspector } from "../../../src/cli/inspector.ts";
import { NodeService } from "../../../src/csi/node.ts";
import { targetPathProblem } from "../../../src/csi/validate.ts";
import {
  NodeGetVolumeStatsRequestSchema,
  NodePublishVolumeRequestSchema,
  NodeUnpublishVolumeRequestSchema,
} from "../../../src/gen/csi/v1/csi_pb.ts";
import type { HeldDirectory, Mounter } from "../../../src/linux/mounter.ts";
import { RpcError } from "../../../src/rpc/status.ts";
import { invalidPublishRequests } from "../../helpers/invalid.ts";
import { podVolume, prepareVolume, publishRequest } from "../../helpers/kubelet.ts";
import { testbed } from "../../helpers/testbed.ts";
import { waitFor } from "../../helpers/wait.ts";

// The node service looks into the agent's directory through one; these tests never need it to.
const inspector = startInspector(10_000);
afterAll(() => inspector.close(), 30_000);

/** Records calls; validation must reject bad requests before any reaches it. */
class RecordingMounter implements Mounter {
  calls: string[][] = [];
  async bindMount(source: HeldDirectory, target: HeldDirectory) {
    this.calls.push(["bind", source.path, target.path]);
  }
  async unmount(target: HeldDirectory) {
    this.calls.push(["unmount", target.path]);
  }
  async makeSlave(target: HeldDirectory) {
    this.calls.push(["slave", target.path]);
  }
}

/** The node service's handlers, on the agent's directory `workloadApiSocketDir`, with `mounter`. */
function nodeHandlers(workloadApiSocketDir: string, mounter: Mounter) {
  return new NodeService({
    nodeId: "node-1",
    pluginName: "csi.spiffe.io",
    workloadApiSocketDir,
    allowSymlinkedSocketDir: false,
    recursiveBind: false,
    allowWritableSubmounts: false,
    mounter,
    inspector,
  }).handlers();
}

const KUBELET_TARGET =
  "/var/lib/kubelet/pods/6f1d6a3e-93b2-4a1a-9d2c-0d9c5c1a2b3c/volumes/kubernetes.io~csi/spiffe/mount";

describe("targetPathProblem", () => {
  test.each([
    KUBELET_TARGET,
    "/var/snap/microk8s/common/var/lib/kubelet/pods/u/volumes/kubernetes.io~csi/v/mount",
    "/var/lib/k0s/kubelet/pods/u/volumes/kubernetes.io~csi/v/mount",
  ])("accepts %s", (path) => {
    expect(targetPathProblem("target_path", path)).toBeUndefined();
  });

  test.each([
    ["", "target_path is required"],
    [`${KUBELET_TARGET}\0`, "must not contain a NUL byte"],
    ["var/lib/kubelet/pods/u/volumes/kubernetes.io~csi/v/mount", "must be an absolute path"],
    ["/var/lib/kubelet/pods/u/volumes/kubernetes.io~csi/../../../../../etc/mount", "'..' segments"],
    ["/var/lib/kubelet/pods/u/volumes/kubernetes.io~csi/v/./mount", "clean path"],
    ["/var/lib/kubelet//pods/u/volumes/kubernetes.io~csi/v/mount", "clean path"],
    [`${KUBELET_TARGET}/`, "clean path"],
    ["/", "clean path"],
    ["/dev/shm", "kubelet CSI volume path"],
    ["/var/lib/kubelet/pods/u/volumes/kubernetes.io~empty-dir/v/mount", "kubelet CSI volume path"],
    ["/var/lib/kubelet/pods/u/volumes/kubernetes.io~csi/v/mount/etc", "kubelet CSI volume path"],
    [`/${"a/".repeat(2100)}pods/u/volumes/kubernetes.io~csi/v/mount`, "longer than 4096 bytes"],
    [
      `/var/lib/kubelet/pods/${"u".repeat(256)}/volumes/kubernetes.io~csi/v/mount`,
      "target_path has a name longer than 255 bytes",
    ],
    // Bytes, not characters: 128 two-byte characters are 256 bytes.
    [
      `/var/lib/kubelet/pods/u/volumes/kubernetes.io~csi/${"é".repeat(128)}/mount`,
      "target_path has a name longer than 255 bytes",
    ],
  ])("rejects %p", (path, message) => {
    expect(targetPathProblem("target_path", path)).toContain(message);
  });
});

describe("NodeService validation", () => {
  const { root, socketDir, kubeletRoot } = testbed("unit-node", { agent: false });

  const mounter = new RecordingMounter();
  const handlers = nodeHandlers(socketDir, mounter);

  async function codeOf(call: Promise<unknown>): Promise<[number, string]> {
    try {
      await call;
    } catch (error) {
      expect(error).toBeInstanceOf(RpcError);
      return [(error as RpcError).code, (error as RpcError).message];
    }
    throw new Error("the call succeeded");
  }

  // Prepared as the kubelet prepares it, so a valid request would go on to the mounter.
  const volume = podVolume(kubeletRoot);
  prepareVolume(volume);
  for (const [name, request, message] of invalidPublishRequests(volume)) {
    test(`NodePublishVolume with ${name}: INVALID_ARGUMENT`, async () => {
      const [code, details] = await codeOf(
        handlers.nodePublishVolume(create(NodePublishVolumeRequestSchema, request)),
      );
      expect(code).toBe(status.INVALID_ARGUMENT);
      expect(details).toContain(message);
      // Mount flags may hold secrets: never echoed.
      expect(details).not.toContain("hunter2");
    });
  }

  test.each([
    [{ volumeId: "", targetPath: KUBELET_TARGET }, "volume_id is required"],
    [{ volumeId: "v", targetPath: "" }, "target_path is required"],
    [{ volumeId: "v", targetPath: "relative/path" }, "must be an absolute path"],
    [{ volumeId: "v", targetPath: `${KUBELET_TARGET}/../x` }, "'..' segments"],
    [{ volumeId: "v", targetPath: `${KUBELET_TARGET}\0` }, "NUL byte"],
    [{ volumeId: "v", targetPath: "/dev/shm" }, "kubelet CSI volume path"],
    [{ volumeId: "v", targetPath: "/" }, "clean path"],
    [
      { volumeId: "v", targetPath: KUBELET_TARGET.replace("/mount", `/${"m".repeat(256)}/mount`) },
      "target_path has a name longer than 255 bytes",
    ],
  ])("NodeUnpublishVolume %p: INVALID_ARGUMENT", async (fields, message) => {
    const [code, details] = await codeOf(
      handlers.nodeUnpublishVolume(create(NodeUnpublishVolumeRequestSchema, fields)),
    );
    expect(code).toBe(status.INVALID_ARGUMENT);
    expect(details).toContain(message);
  });

  test.each([
    [
      { volumeId: "", volumePath: KUBELET_TARGET },
      status.INVALID_ARGUMENT,
      "volume_id is required",
    ],
    [{ volumeId: "v", volumePath: "" }, status.INVALID_ARGUMENT, "volume_path is required"],
    [{ volumeId: "v", volumePath: "a\0b" }, status.INVALID_ARGUMENT, "NUL byte"],
    [{ volumeId: "v", volumePath: "some/path" }, status.NOT_FOUND, "no volume is published"],
    [{ volumeId: "v", volumePath: "/etc" }, status.NOT_FOUND, "no volume is published"],
    [{ volumeId: "v", volumePath: KUBELET_TARGET }, status.NOT_FOUND, "it does not exist"],
    [
      { volumeId: "v", volumePath: KUBELET_TARGET.replace("/mount", `/${"m".repeat(256)}/mount`) },
      status.NOT_FOUND,
      "volume_path has a name longer than 255 bytes",
    ],
  ])("NodeGetVolumeStats %p", async (fields, expected, message) => {
    const [code, details] = await codeOf(
      handlers.nodeGetVolumeStats(create(NodeGetVolumeStatsRequestSchema, fields)),
    );
    expect(code).toBe(expected);
    expect(details).toContain(message);
  });

  test("no invalid request reached the mounter; the valid one does", async () => {
    expect(mounter.calls).toEqual([]);
    // The fake mounter mounts nothing, so the driver's own check after mounting fails.
    const [code, details] = await codeOf(
      handlers.nodePublishVolume(create(NodePublishVolumeRequestSchema, publishRequest(volume))),
    );
    expect(code).toBe(status.INTERNAL);
    expect(details).toContain("mount reported success");
    expect(mounter.calls).toEqual([["bind", socketDir, volume.targetPath]]);
  });

  test("a valid request with the agent's directory missing: UNAVAILABLE", async () => {
    const missing = nodeHandlers(join(root, "no-agent"), mounter);
    const [code, details] = await codeOf(
      missing.nodePublishVolume(create(NodePublishVolumeRequestSchema, publishRequest(volume))),
    );
    expect(code).toBe(status.UNAVAILABLE);
    expect(details).toContain("does not exist (is the SPIFFE agent running?)");
  });
});

describe("NodeService concurrency", () => {
  const { root, socketDir } = testbed("unit-locks", { agent: false });

  /** Holds each mount until `hold` resolves, and counts the calls and how many overlap. */
  class HoldingMounter implements Mounter {
    arrived = 0;
    running = 0;
    most = 0;
    constructor(private readonly hold: () => Promise<unknown>) {}
    async bindMount() {
      this.arrived++;
      this.running++;
      this.most = Math.max(this.most, this.running);
      try {
        await this.hold();
      } finally {
        this.running--;
      }
    }
    async unmount() {}
    async makeSlave() {}
  }

  const service = (mounter: Mounter) => nodeHandlers(socketDir, mounter);

  function prepared(): ReturnType<typeof podVolume> {
    const volume = podVolume(join(root, "kubelet"));
    prepareVolume(volume);
    return volume;
  }

  const publish = (handlers: ReturnType<typeof service>, volume: ReturnType<typeof podVolume>) =>
    handlers
      .nodePublishVolume(create(NodePublishVolumeRequestSchema, publishRequest(volume)))
      .catch(() => {});

  test("calls for one target never overlap", async () => {
    // A call let through beside a held one would be counted while the first is held.
    const mounter = new HoldingMounter(() => Bun.sleep(20));
    const handlers = service(mounter);
    const volume = prepared();
    await Promise.all(Array.from({ length: 10 }, () => publish(handlers, volume)));
    expect(mounter.most).toBe(1);
  }, 60_000);

  test("calls for different targets run in parallel", async () => {
    // Each call is held until all ten are inside at once, however slowly they arrive.
    const mounter: HoldingMounter = new HoldingMounter(() =>
      waitFor("ten mounts", () => mounter.arrived === 10),
    );
    const handlers = service(mounter);
    await Promise.all(Array.from({ length: 10 }, () => publish(handlers, prepared())));
    expect(mounter.most).toBe(10);
  }, 120_000);
});
