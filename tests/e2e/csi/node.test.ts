// Real binary, real grpc-js client, real bind mounts, inside a private mount namespace.
import { describe, expect, test } from "bun:test";
import {
  existsSync,
  mkdirSync,
  readdirSync,
  rmSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { join } from "node:path";
import { status } from "@grpc/grpc-js";
import {
  NodeServiceCapability_RPC_Type,
  VolumeUsage_Unit,
} from "../../../src/gen/csi/v1/csi_pb.ts";
import { talkToAgent } from "../../helpers/agent.ts";
import { clients, runBinary } from "../../helpers/driver.ts";
import { invalidPublishRequests } from "../../helpers/invalid.ts";
import {
  mountsAt,
  mountsUnder,
  type PodVolume,
  podVolume,
  publishRequest,
  statsRequest,
  unpublishRequest,
} from "../../helpers/kubelet.ts";
import { rpcFailure } from "../../helpers/rpc.ts";
import { mountTestbed } from "../../helpers/testbed.ts";

const bed = mountTestbed("node");
const { root, socketDir, kubeletRoot } = bed;
const { node } = bed.clients();
const driver = await bed.start();
const volumes: PodVolume[] = [];

bed.beforeCleanup(async () => {
  // Unpublishing every volume the tests made, as the kubelet does when the pods go, must leave
  // no mount and no mount directory behind.
  for (const volume of volumes) {
    await node.nodeUnpublishVolume(unpublishRequest(volume)).catch(() => {});
  }
  expect(mountsUnder(root)).toBe(0);
  const { stderr } = await driver.stop();
  expect(stderr).not.toContain("code=INTERNAL");
});

/** A pod volume whose directory the kubelet has prepared. */
function preparedVolume(): PodVolume {
  const volume = bed.volume();
  volumes.push(volume);
  return volume;
}

async function published(): Promise<PodVolume> {
  const volume = preparedVolume();
  await node.nodePublishVolume(publishRequest(volume));
  return volume;
}

/**
 * A call on a volume whose target is a directory already, with a file in it: it must answer
 * FAILED_PRECONDITION with `details`, and keep the file.
 */
async function refusedAndKept(call: (volume: PodVolume) => Promise<unknown>, details: string) {
  const volume = preparedVolume();
  mkdirSync(volume.targetPath);
  writeFileSync(join(volume.targetPath, "data"), "keep me");
  const error = await rpcFailure(call(volume));
  expect(error.code).toBe(status.FAILED_PRECONDITION);
  expect(error.details).toContain(details);
  expect(readdirSync(volume.targetPath)).toEqual(["data"]);
}

describe("NodePublishVolume", () => {
  test("bind-mounts the Workload API directory: the pod reaches the agent through it", async () => {
    const volume = await published();
    expect(mountsAt(volume.targetPath)).toBe(1);
    expect(await talkToAgent(volume.targetPath)).toBe("pong ping");
  });

  test("publishing again (a kubelet restart) answers OK and keeps one mount", async () => {
    const volume = await published();
    for (let i = 0; i < 3; i++) await node.nodePublishVolume(publishRequest(volume));
    expect(mountsAt(volume.targetPath)).toBe(1);
  });

  test("50 concurrent publishes of one target make exactly one mount", async () => {
    const volume = preparedVolume();
    await Promise.all(
      Array.from({ length: 50 }, () => node.nodePublishVolume(publishRequest(volume))),
    );
    expect(mountsAt(volume.targetPath)).toBe(1);
  });

  test("publishes of different targets all succeed at once", async () => {
    const volumes = Array.from({ length: 20 }, preparedVolume);
    await Promise.all(volumes.map((volume) => node.nodePublishVolume(publishRequest(volume))));
    for (const volume of volumes) expect(mountsAt(volume.targetPath)).toBe(1);
  });

  for (const [name, request, message] of invalidPublishRequests(podVolume(kubeletRoot))) {
    test(`${name}: INVALID_ARGUMENT`, async () => {
      const error = await rpcFailure(node.nodePublishVolume(request));
      expect(error.code).toBe(status.INVALID_ARGUMENT);
      expect(error.details).toContain(message);
    });
  }

  test("a 256-byte name in the path: unpublish INVALID_ARGUMENT and stats NOT_FOUND, naming the field, never INTERNAL", async () => {
    const volume = podVolume(kubeletRoot, "v".repeat(256));
    const unpublish = await rpcFailure(node.nodeUnpublishVolume(unpublishRequest(volume)));
    expect(unpublish.code).toBe(status.INVALID_ARGUMENT);
    expect(unpublish.details).toContain("target_path has a name longer than 255 bytes");
    const stats = await rpcFailure(node.nodeGetVolumeStats(statsRequest(volume)));
    expect(stats.code).toBe(status.NOT_FOUND);
    expect(stats.details).toContain("volume_path has a name longer than 255 bytes");
  });

  test("a target that is a symbolic link is refused, and nothing is mounted where it points", async () => {
    const volume = preparedVolume();
    const elsewhere = join(root, "elsewhere");
    mkdirSync(elsewhere);
    symlinkSync(elsewhere, volume.targetPath);
    const error = await rpcFailure(node.nodePublishVolume(publishRequest(volume)));
    expect(error.code).toBe(status.FAILED_PRECONDITION);
    expect(error.details).toContain("is a symbolic link");
    expect(mountsAt(elsewhere)).toBe(0);
    expect(mountsAt(volume.targetPath)).toBe(0);
  });

  test("a target directory with contents is not mounted over", async () => {
    await refusedAndKept(
      (volume) => node.nodePublishVolume(publishRequest(volume)),
      "refusing to mount over it",
    );
  });

  test("a target recorded for another volume id: ALREADY_EXISTS", async () => {
    const volume = await published();
    const error = await rpcFailure(
      node.nodePublishVolume({ ...publishRequest(volume), volumeId: "csi-someone-else" }),
    );
    expect(error.code).toBe(status.ALREADY_EXISTS);
    expect(error.details).toContain(`belongs to volume "${volume.volumeId}"`);
    expect(mountsAt(volume.targetPath)).toBe(1);
  });

  test("the kubelet's volume directory missing: FAILED_PRECONDITION, nothing created", async () => {
    const volume = podVolume(kubeletRoot);
    const error = await rpcFailure(node.nodePublishVolume(publishRequest(volume)));
    expect(error.code).toBe(status.FAILED_PRECONDITION);
    expect(error.details).toContain("volume directory of target_path");
    expect(existsSync(volume.volumeDir)).toBe(false);
  });
});

describe("NodeUnpublishVolume", () => {
  test("unmounts and removes the directory, leaving the kubelet's files", async () => {
    const volume = await published();
    await node.nodeUnpublishVolume(unpublishRequest(volume));
    expect(mountsAt(volume.targetPath)).toBe(0);
    expect(existsSync(volume.targetPath)).toBe(false);
    expect(readdirSync(volume.volumeDir)).toEqual(["vol_data.json"]);
    // The agent's directory is untouched.
    expect(await talkToAgent(socketDir)).toBe("pong ping");
  });

  test("twice, and for a never-published path, answers OK", async () => {
    const volume = await published();
    await node.nodeUnpublishVolume(unpublishRequest(volume));
    await node.nodeUnpublishVolume(unpublishRequest(volume));
    await node.nodeUnpublishVolume(unpublishRequest(podVolume(kubeletRoot)));
  });

  test("after a node reboot (directory there, no mount) removes the directory", async () => {
    const volume = await published();
    expect(Bun.spawnSync(["umount", volume.targetPath]).exitCode).toBe(0);
    // The directory the driver made, as the kubelet makes its parent.
    expect(statSync(volume.targetPath).mode & 0o777).toBe(0o750);
    await node.nodeUnpublishVolume(unpublishRequest(volume));
    expect(existsSync(volume.targetPath)).toBe(false);
  });

  test("removes all of three stacked mounts left by an older driver", async () => {
    const volume = preparedVolume();
    mkdirSync(volume.targetPath);
    for (let i = 0; i < 3; i++) {
      expect(Bun.spawnSync(["mount", "--bind", socketDir, volume.targetPath]).exitCode).toBe(0);
    }
    expect(mountsAt(volume.targetPath)).toBe(3);
    await node.nodeUnpublishVolume(unpublishRequest(volume));
    expect(mountsAt(volume.targetPath)).toBe(0);
    expect(existsSync(volume.targetPath)).toBe(false);
  });

  test("another driver's volume is left mounted, with an error", async () => {
    const volume = preparedVolume();
    writeFileSync(
      join(volume.volumeDir, "vol_data.json"),
      JSON.stringify({ driverName: "secrets.example.com", volumeHandle: volume.volumeId }),
    );
    mkdirSync(volume.targetPath);
    expect(Bun.spawnSync(["mount", "-t", "tmpfs", "tmpfs", volume.targetPath]).exitCode).toBe(0);
    const error = await rpcFailure(node.nodeUnpublishVolume(unpublishRequest(volume)));
    expect(error.code).toBe(status.FAILED_PRECONDITION);
    expect(error.details).toContain("tmpfs");
    expect(error.details).toContain("refusing to unmount it");
    expect(mountsAt(volume.targetPath)).toBe(1);
    const publish = await rpcFailure(node.nodePublishVolume(publishRequest(volume)));
    expect(publish.code).toBe(status.FAILED_PRECONDITION);
    expect(publish.details).toContain('belongs to a volume of driver "secrets.example.com"');
    const stats = await rpcFailure(node.nodeGetVolumeStats(statsRequest(volume)));
    expect(stats.code).toBe(status.NOT_FOUND);
    expect(Bun.spawnSync(["umount", volume.targetPath]).exitCode).toBe(0);
  });

  test("without the kubelet's record, a mount that is not a bind of the agent's directory stays", async () => {
    const volume = preparedVolume();
    rmSync(join(volume.volumeDir, "vol_data.json"));
    mkdirSync(volume.targetPath);
    expect(Bun.spawnSync(["mount", "-t", "tmpfs", "tmpfs", volume.targetPath]).exitCode).toBe(0);
    const error = await rpcFailure(node.nodeUnpublishVolume(unpublishRequest(volume)));
    expect(error.code).toBe(status.FAILED_PRECONDITION);
    expect(mountsAt(volume.targetPath)).toBe(1);
    expect(Bun.spawnSync(["umount", volume.targetPath]).exitCode).toBe(0);
  });

  test("a pod directory that is a symbolic link is refused, and nothing is mounted or removed", async () => {
    const volume = podVolume(kubeletRoot);
    const outside = join(root, "outside-pod");
    const podDir = join(kubeletRoot, "pods", volume.podUid);
    mkdirSync(join(outside, "volumes", "kubernetes.io~csi", volume.volumeName, "mount"), {
      recursive: true,
    });
    mkdirSync(join(kubeletRoot, "pods"), { recursive: true });
    symlinkSync(outside, podDir);
    const publish = await rpcFailure(node.nodePublishVolume(publishRequest(volume)));
    expect(publish.code).toBe(status.INVALID_ARGUMENT);
    expect(publish.details).toContain("passes through a symbolic link below the kubelet root");
    const unpublish = await rpcFailure(node.nodeUnpublishVolume(unpublishRequest(volume)));
    expect(unpublish.code).toBe(status.INVALID_ARGUMENT);
    expect(mountsUnder(outside)).toBe(0);
    expect(
      existsSync(join(outside, "volumes", "kubernetes.io~csi", volume.volumeName, "mount")),
    ).toBe(true);
    const stats = await rpcFailure(node.nodeGetVolumeStats(statsRequest(volume)));
    expect(stats.code).toBe(status.NOT_FOUND);
  });

  test("a directory that is not a mount point and not empty is an error, and is kept", async () => {
    await refusedAndKept(
      (volume) => node.nodeUnpublishVolume(unpublishRequest(volume)),
      "is not a mount point and is not empty",
    );
  });

  test.each([
    ["/", "clean path"],
    ["/dev/shm", "kubelet CSI volume path"],
  ])("%s is refused with INVALID_ARGUMENT", async (targetPath, message) => {
    const error = await rpcFailure(node.nodeUnpublishVolume({ volumeId: "v", targetPath }));
    expect(error.code).toBe(status.INVALID_ARGUMENT);
    expect(error.details).toContain(message);
  });
});

describe("NodeGetVolumeStats", () => {
  test("a published volume is normal, with bytes and inodes", async () => {
    const volume = await published();
    const stats = await node.nodeGetVolumeStats(statsRequest(volume));
    expect(stats.volumeCondition).toMatchObject({ abnormal: false });
    const units = stats.usage.map((usage) => usage.unit);
    expect(units).toEqual([VolumeUsage_Unit.BYTES, VolumeUsage_Unit.INODES]);
    for (const usage of stats.usage) {
      expect(usage.total).toBeGreaterThan(0n);
      expect(usage.used + usage.available).toBeLessThanOrEqual(usage.total);
    }
  });

  test("a directory that is not mounted is abnormal", async () => {
    const volume = await published();
    expect(Bun.spawnSync(["umount", volume.targetPath]).exitCode).toBe(0);
    const stats = await node.nodeGetVolumeStats(statsRequest(volume));
    expect(stats.volumeCondition?.abnormal).toBe(true);
    expect(stats.volumeCondition?.message).toContain("is not a mount point");
  });

  test("a path that does not exist, or a relative one, is NOT_FOUND", async () => {
    const missing = await rpcFailure(node.nodeGetVolumeStats(statsRequest(podVolume(kubeletRoot))));
    expect(missing.code).toBe(status.NOT_FOUND);
    const relative = await rpcFailure(
      node.nodeGetVolumeStats({ volumeId: "v", volumePath: "some/path" }),
    );
    expect(relative.code).toBe(status.NOT_FOUND);
  });

  test("no volume_id or volume_path is INVALID_ARGUMENT", async () => {
    const volume = podVolume(kubeletRoot);
    const noId = await rpcFailure(node.nodeGetVolumeStats({ volumePath: volume.targetPath }));
    expect(noId.code).toBe(status.INVALID_ARGUMENT);
    const noPath = await rpcFailure(node.nodeGetVolumeStats({ volumeId: volume.volumeId }));
    expect(noPath.code).toBe(status.INVALID_ARGUMENT);
  });
});

describe("the agent's directory over time", () => {
  test("the agent restarting (socket deleted and re-created) is reachable with no new publish", async () => {
    const volume = await published();
    bed.restartAgent();
    expect(await talkToAgent(volume.targetPath, "again")).toBe("pong again");
    expect(mountsAt(volume.targetPath)).toBe(1);
  });

  test("the directory replaced: stats abnormal, a re-publish repairs with one mount", async () => {
    const volume = await published();
    bed.restartAgent({ replaceDir: true });

    const broken = await node.nodeGetVolumeStats(statsRequest(volume));
    expect(broken.volumeCondition?.abnormal).toBe(true);
    expect(broken.volumeCondition?.message).toContain("no longer shows the Workload API directory");
    await expect(talkToAgent(volume.targetPath)).rejects.toThrow();

    await node.nodePublishVolume(publishRequest(volume));
    expect(mountsAt(volume.targetPath)).toBe(1);
    expect(await talkToAgent(volume.targetPath)).toBe("pong ping");
    expect((await node.nodeGetVolumeStats(statsRequest(volume))).volumeCondition?.abnormal).toBe(
      false,
    );
  });

  test("a stale mount of the replaced directory is still unpublished", async () => {
    const volume = await published();
    bed.restartAgent({ replaceDir: true });
    await node.nodeUnpublishVolume(unpublishRequest(volume));
    expect(mountsAt(volume.targetPath)).toBe(0);
    expect(existsSync(volume.targetPath)).toBe(false);
  });
});

describe("the agent's directory as a file system of its own", () => {
  test("replaced by a new tmpfs: stats abnormal, unpublish still removes the old bind", async () => {
    const volume = await published();
    bed.agent?.stop(true);
    expect(Bun.spawnSync(["mount", "-t", "tmpfs", "agent-tmpfs", socketDir]).exitCode).toBe(0);
    try {
      bed.restartAgent();
      const stats = await node.nodeGetVolumeStats(statsRequest(volume));
      expect(stats.volumeCondition?.abnormal).toBe(true);
      await node.nodeUnpublishVolume(unpublishRequest(volume));
      expect(mountsAt(volume.targetPath)).toBe(0);
      expect(existsSync(volume.targetPath)).toBe(false);
    } finally {
      bed.agent?.stop(true);
      expect(Bun.spawnSync(["umount", socketDir]).exitCode).toBe(0);
      bed.restartAgent();
    }
  });
});

describe("NodeGetCapabilities and NodeGetInfo", () => {
  test("advertise VOLUME_CONDITION and GET_VOLUME_STATS", async () => {
    const { capabilities } = await node.nodeGetCapabilities({});
    const types = capabilities.map((c) => (c.type.case === "rpc" ? c.type.value.type : undefined));
    expect(types.sort()).toEqual(
      [
        NodeServiceCapability_RPC_Type.GET_VOLUME_STATS,
        NodeServiceCapability_RPC_Type.VOLUME_CONDITION,
      ].sort(),
    );
  });

  test("answer the node id with no volume limit", async () => {
    const info = await node.nodeGetInfo({});
    expect(info.nodeId).toBe("node-1");
    expect(info.maxVolumesPerNode).toBe(0n);
  });
});

describe("mount failures", async () => {
  const PATH = bed.standIn("mount", "echo 'mount: simulated failure' >&2\nexit 32");
  const failingSocketPath = join(root, "failing", "csi.sock");
  await bed.start([], { csiSocketPath: failingSocketPath, env: { PATH } });

  test("a failing mount answers INTERNAL with its status and message, and leaves no directory", async () => {
    const volume = preparedVolume();
    const error = await rpcFailure(
      clients(failingSocketPath).node.nodePublishVolume(publishRequest(volume)),
    );
    expect(error.code).toBe(status.INTERNAL);
    expect(error.details).toContain("exited with status 32");
    expect(error.details).toContain("mount: simulated failure");
    expect(existsSync(volume.targetPath)).toBe(false);
    expect(readdirSync(volume.volumeDir)).toEqual(["vol_data.json"]);
  });
});

test.each(["mount", "umount"])(
  "the driver refuses to start without %s on PATH",
  async (missing) => {
    // A PATH holding only the other of the two programs.
    const bin = join(root, `only-${missing}`);
    mkdirSync(bin);
    const present = missing === "mount" ? "umount" : "mount";
    symlinkSync(Bun.which(present) ?? `/usr/bin/${present}`, join(bin, present));
    const socketPath = join(root, `without-${missing}`, "csi.sock");
    const { code, stderr } = await runBinary(
      ["-workload-api-socket-dir", socketDir, "-csi-socket-path", socketPath],
      { MY_NODE_NAME: "n", PATH: bin },
    );
    expect(code).toBe(1);
    expect(stderr).toContain(`cannot find ${missing} on PATH`);
    expect(existsSync(socketPath)).toBe(false);
  },
);
