// A file system that stops answering, mounted in the kubelet's directories (a privileged pod's
// FUSE server over its own pod directory, or a request that names a kubelet root inside one):
// the walk to the volume directory judges each mount before it looks up a name in it, so the
// call is answered at once, and the driver goes on serving other pods.
import { afterAll, afterEach, describe, expect, test } from "bun:test";
import { chmodSync, mkdirSync, rmSync } from "node:fs";
import { join } from "node:path";
import { status } from "@grpc/grpc-js";
import { startAgent } from "../../helpers/agent.ts";
import {
  clients,
  type DriverProcess,
  mountTestFile,
  startDriver,
  tempDir,
} from "../../helpers/driver.ts";
import { FuseMount } from "../../helpers/fuse.ts";
import {
  mountsAt,
  mountsUnder,
  podVolume,
  preparedVolume,
  publishRequest,
  statsRequest,
  unpublishRequest,
} from "../../helpers/kubelet.ts";
import { rpcFailure } from "../../helpers/rpc.ts";

mountTestFile();

// A bound for a loaded machine, not a figure: without the gate the call never ends.
const WITHIN_MS = 10_000;

const root = tempDir("kubelet-mounts");
const socketDir = join(root, "agent-sockets");
const kubeletRoot = join(root, "kubelet");
const running: DriverProcess[] = [];
const fuses: FuseMount[] = [];

Bun.spawnSync(["mount", "-t", "tmpfs", "kubelet-mounts-test", root]);
chmodSync(root, 0o755);
mkdirSync(socketDir);
mkdirSync(kubeletRoot);
const agent = startAgent(socketDir);

afterEach(async () => {
  for (const driver of running.splice(0)) {
    if (driver.proc.exitCode === null) await driver.stop("SIGKILL");
  }
  for (const fuse of fuses.splice(0)) await fuse.stop();
}, 60_000);

afterAll(() => {
  agent.stop(true);
  for (let tries = 0; tries < 20 && mountsUnder(root) > 0; tries++) {
    Bun.spawnSync(["umount", "-R", "-l", root]);
  }
  Bun.spawnSync(["umount", "-l", root]);
  expect(mountsUnder(root)).toBe(0);
  rmSync(root, { recursive: true, force: true });
}, 60_000);

/** `call`'s failure; fails the test beyond WITHIN_MS. */
async function answered(call: Promise<unknown>) {
  const started = performance.now();
  const failure = await rpcFailure(call);
  expect(performance.now() - started).toBeLessThan(WITHIN_MS);
  return failure;
}

describe("a silent FUSE file system in the kubelet's directories", () => {
  test("over a pod's directory: its calls are UNAVAILABLE at once, naming the mount; other pods are served", async () => {
    const csiSocketPath = join(root, "pod-dir", "csi.sock");
    const driver = await startDriver({ workloadApiSocketDir: socketDir, csiSocketPath });
    running.push(driver);
    const { node } = clients(csiSocketPath);
    const hidden = podVolume(kubeletRoot);
    const podDir = join(kubeletRoot, "pods", hidden.podUid);
    mkdirSync(podDir, { recursive: true });
    const fuse = await FuseMount.start(podDir);
    fuses.push(fuse);
    await fuse.hang();

    for (const call of [
      node.nodePublishVolume(publishRequest(hidden)),
      node.nodeUnpublishVolume(unpublishRequest(hidden)),
      node.nodeGetVolumeStats(statsRequest(hidden)),
    ]) {
      const failure = await answered(call);
      expect(failure.code).toBe(status.UNAVAILABLE);
      expect(failure.details).toContain(`${podDir} is on a fuse mount`);
    }

    const other = preparedVolume(kubeletRoot);
    await node.nodePublishVolume(publishRequest(other));
    expect(mountsAt(other.targetPath)).toBe(1);
    await node.nodeUnpublishVolume(unpublishRequest(other));
    expect(mountsAt(other.targetPath)).toBe(0);
    node.close();
  }, 60_000);

  test("a request whose kubelet root is one: UNAVAILABLE at once", async () => {
    const csiSocketPath = join(root, "root-dir", "csi.sock");
    const driver = await startDriver({ workloadApiSocketDir: socketDir, csiSocketPath });
    running.push(driver);
    const { node } = clients(csiSocketPath);
    const fuseRoot = join(root, "fuse-kubelet");
    mkdirSync(fuseRoot);
    const fuse = await FuseMount.start(fuseRoot);
    fuses.push(fuse);
    await fuse.hang();
    const failure = await answered(node.nodePublishVolume(publishRequest(podVolume(fuseRoot))));
    expect(failure.code).toBe(status.UNAVAILABLE);
    expect(failure.details).toContain(`${fuseRoot} is on a fuse mount`);
    node.close();
  }, 60_000);
});
