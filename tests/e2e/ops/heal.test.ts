// Self-healing when the Workload API directory the driver sees was removed on the node.
//
// SPIRE's chart mounts the agent's directory itself (not its parent) into the driver's container:
// when the agent removes and re-creates it on the node, the container's mount still holds the
// removed one, and only a new container gets the node's current one. Here this test's namespace
// is the node; a "container start" is a mount namespace of its own in which the node's directory,
// as it is at that moment, is bound read-only at the container's path, with the kubelet root a
// peer of the node's (Bidirectional). The standalone DaemonSet mounts the parent instead; a
// re-created parent strands the driver the same way, and the driver heals the same way.
import { describe, expect, test } from "bun:test";
import { existsSync, mkdirSync, rmdirSync, rmSync } from "node:fs";
import { join } from "node:path";
import { status } from "@grpc/grpc-js";
import type { UnixSocketListener } from "bun";
import { startAgent, talkToAgent } from "../../helpers/agent.ts";
import {
  BINARY,
  clients,
  DriverProcess,
  mountTestFile,
  startDriver,
  waitServing,
} from "../../helpers/driver.ts";
import {
  mountsAt,
  podVolume,
  preparedVolume,
  prepareVolume,
  publishRequest,
  removeVolume,
  unpublishRequest,
} from "../../helpers/kubelet.ts";
import { rpcFailure } from "../../helpers/rpc.ts";
import { testbed } from "../../helpers/testbed.ts";
import { waitFor } from "../../helpers/wait.ts";

mountTestFile();

// The exit status of a driver that stops so that its container restarts.
const EXIT_RESTART = 75;

const bed = testbed("heal", { agent: false });
const { root, kubeletRoot } = bed;
mkdirSync(kubeletRoot);
run("mount", "-t", "tmpfs", "tmpfs", kubeletRoot);
run("mount", "--make-shared", kubeletRoot);
const agents: UnixSocketListener<undefined>[] = [];
const drivers: DriverProcess[] = [];

bed.beforeCleanup(async () => {
  for (const driver of drivers) if (driver.proc.exitCode === null) await driver.stop();
  for (const agent of agents) agent.stop(true);
  run("umount", "--recursive", "--lazy", kubeletRoot);
});

function run(...argv: string[]): void {
  const result = Bun.spawnSync(argv, { stdout: "pipe", stderr: "pipe" });
  if (result.exitCode !== 0) {
    throw new Error(`${argv.join(" ")} exited ${result.exitCode}: ${result.stderr.toString()}`);
  }
}

/** The node's agent directory with a running agent in it, made afresh (as an agent's start). */
function createOnNode(dir: string): void {
  mkdirSync(dir, { recursive: true });
  agents.push(startAgent(dir));
}

/** The agent goes and its directory with it: socket, then directory (never recursively). */
function removeOnNode(dir: string): void {
  agents.pop()?.stop(true);
  rmSync(join(dir, "agent.sock"), { force: true });
  rmdirSync(dir);
}

/**
 * A container start: `nodePath` as it is now, bound read-only at `containerPath` in a mount
 * namespace of the driver's own; the driver is given `socketDir` (the container's path, or one
 * below it).
 */
async function startContainer(
  nodePath: string,
  containerPath: string,
  socketDir: string,
  csiSocketPath: string,
  backoffSeconds: number,
): Promise<DriverProcess> {
  mkdirSync(containerPath, { recursive: true });
  const driver = new DriverProcess(
    Bun.spawn(
      [
        "unshare",
        "--mount",
        "--propagation",
        "unchanged",
        "sh",
        "-c",
        'mount --bind -o ro "$0" "$1" && shift && exec "$@"',
        nodePath,
        containerPath,
        BINARY,
        "-workload-api-socket-dir",
        socketDir,
        "-csi-socket-path",
        csiSocketPath,
        "--self-restart-backoff",
        String(backoffSeconds),
      ],
      {
        stdin: "ignore",
        stdout: "pipe",
        stderr: "pipe",
        env: { PATH: process.env.PATH ?? "/usr/bin:/bin", MY_NODE_NAME: "node-heal" },
      },
    ),
  );
  drivers.push(driver);
  await waitServing(driver, csiSocketPath);
  return driver;
}

describe("SPIRE's chart: the directory itself bound read-only into the driver's container", () => {
  const nodeDir = join(root, "chart-node", "agent-sockets");
  const containerDir = join(root, "chart-container", "spire-agent-socket");
  const csiSocketPath = join(root, "chart-plugin", "csi.sock");
  // A back-off long enough that the driver is still up while this test asks it, whatever the load.
  const BACKOFF_S = 15;
  const stranded = podVolume(kubeletRoot);
  const retried = podVolume(kubeletRoot);

  test("removed and re-created on the node: Probe not ready, publish UNAVAILABLE, then exit 75 no sooner than the back-off after start", async () => {
    createOnNode(nodeDir);
    const spawned = performance.now();
    const driver = await startContainer(
      nodeDir,
      containerDir,
      containerDir,
      csiSocketPath,
      BACKOFF_S,
    );
    const { identity, node } = clients(csiSocketPath);
    prepareVolume(stranded);
    await node.nodePublishVolume(publishRequest(stranded));
    expect(await talkToAgent(stranded.targetPath)).toBe("pong ping");

    removeOnNode(nodeDir);
    createOnNode(nodeDir);
    // Binding the driver's view now would give the pod the removed, empty directory.
    prepareVolume(retried);
    const error = await rpcFailure(node.nodePublishVolume(publishRequest(retried)));
    expect(error.code).toBe(status.UNAVAILABLE);
    expect(error.details).toContain(
      `the Workload API socket directory "${containerDir}" was removed`,
    );
    expect(error.details).toContain("the driver restarts");
    expect(existsSync(retried.targetPath)).toBe(false);
    expect((await identity.probe({})).ready).toBe(false);
    identity.close();
    node.close();

    const { code, stderr } = await driver.exited();
    expect(code).toBe(EXIT_RESTART);
    // At most one such restart per back-off: the driver ran at least that long.
    expect(performance.now() - spawned).toBeGreaterThanOrEqual(BACKOFF_S * 1000);
    expect(stderr).toContain("restarting so that the container gets the node's current directory");
    expect(stderr).toContain(`exit_status=${EXIT_RESTART}`);
    // It drained and went: its socket is gone, and the mount it made is still there.
    expect(existsSync(csiSocketPath)).toBe(false);
    expect(mountsAt(stranded.targetPath)).toBe(1);
  });

  test("the restarted container publishes the kubelet's retry, reaching the new agent, and unpublishes the stranded volume", async () => {
    const driver = await startContainer(nodeDir, containerDir, containerDir, csiSocketPath, 1);
    const { node } = clients(csiSocketPath);
    await node.nodePublishVolume(publishRequest(retried));
    expect(await talkToAgent(retried.targetPath, "healed")).toBe("pong healed");
    // The volume published before holds the removed directory; unpublishing it removes it.
    await node.nodeUnpublishVolume(unpublishRequest(stranded));
    expect(mountsAt(stranded.targetPath)).toBe(0);
    removeVolume(stranded);
    await node.nodeUnpublishVolume(unpublishRequest(retried));
    removeVolume(retried);
    node.close();
    expect(driver.proc.exitCode).toBeNull();
  });

  test("with no call at all, the driver notices by itself and restarts", async () => {
    const driver = drivers.at(-1) as DriverProcess;
    removeOnNode(nodeDir);
    createOnNode(nodeDir);
    const { code, stderr } = await driver.exited();
    expect(code).toBe(EXIT_RESTART);
    expect(stderr).toContain("restarting so that the container gets the node's current directory");
    const again = await startContainer(nodeDir, containerDir, containerDir, csiSocketPath, 1);
    const { node } = clients(csiSocketPath);
    const volume = preparedVolume(kubeletRoot);
    await node.nodePublishVolume(publishRequest(volume));
    expect(await talkToAgent(volume.targetPath)).toBe("pong ping");
    await node.nodeUnpublishVolume(unpublishRequest(volume));
    removeVolume(volume);
    node.close();
    expect((await again.stop()).code).toBe(0);
  });
});

describe("the standalone DaemonSet: the directory's parent mounted", () => {
  const nodeParent = join(root, "standalone-node", "spire");
  const containerParent = join(root, "standalone-container", "run", "spire");
  const containerDir = join(containerParent, "agent-sockets");
  const csiSocketPath = join(root, "standalone-plugin", "csi.sock");

  test("the directory re-created: the driver sees the new one, nothing restarts", async () => {
    createOnNode(join(nodeParent, "agent-sockets"));
    const driver = await startContainer(
      nodeParent,
      containerParent,
      containerDir,
      csiSocketPath,
      1,
    );
    const { identity, node } = clients(csiSocketPath);
    removeOnNode(join(nodeParent, "agent-sockets"));
    createOnNode(join(nodeParent, "agent-sockets"));
    const volume = preparedVolume(kubeletRoot);
    await node.nodePublishVolume(publishRequest(volume));
    expect(await talkToAgent(volume.targetPath, "same driver")).toBe("pong same driver");
    await node.nodeUnpublishVolume(unpublishRequest(volume));
    removeVolume(volume);
    expect((await identity.probe({})).ready).toBe(true);
    identity.close();
    node.close();
    expect(driver.proc.exitCode).toBeNull();
  });

  test("the parent itself re-created: the directory is out of reach, and the driver restarts", async () => {
    const driver = drivers.at(-1) as DriverProcess;
    const { node } = clients(csiSocketPath);
    removeOnNode(join(nodeParent, "agent-sockets"));
    rmdirSync(nodeParent);
    createOnNode(join(nodeParent, "agent-sockets"));
    const volume = preparedVolume(kubeletRoot);
    const error = await rpcFailure(node.nodePublishVolume(publishRequest(volume)));
    expect(error.code).toBe(status.UNAVAILABLE);
    expect(error.details).toContain(
      `is out of reach: "${containerParent}", on its path, was removed`,
    );
    node.close();
    expect((await driver.exited()).code).toBe(EXIT_RESTART);
    await startContainer(nodeParent, containerParent, containerDir, csiSocketPath, 1);
    const restarted = clients(csiSocketPath).node;
    await restarted.nodePublishVolume(publishRequest(volume));
    expect(await talkToAgent(volume.targetPath)).toBe("pong ping");
    await restarted.nodeUnpublishVolume(unpublishRequest(volume));
    removeVolume(volume);
    restarted.close();
  });
});

test("a directory that merely does not exist yet restarts nothing: UNAVAILABLE until the agent makes it", async () => {
  const socketDir = join(root, "later", "agent-sockets");
  mkdirSync(join(root, "later"));
  const csiSocketPath = join(root, "later-plugin", "csi.sock");
  const spawned = performance.now();
  const driver = await startDriver({
    workloadApiSocketDir: socketDir,
    csiSocketPath,
    args: ["--self-restart-backoff", "1"],
  });
  drivers.push(driver);
  const { identity, node } = clients(csiSocketPath);
  const volume = preparedVolume(kubeletRoot);
  // Past the back-off and a check of the driver's own, the answer is the same and the driver
  // is the same process.
  for (const _ of [1, 2]) {
    const error = await rpcFailure(node.nodePublishVolume(publishRequest(volume)));
    expect(error.code).toBe(status.UNAVAILABLE);
    expect(error.details).toContain("does not exist");
    expect((await identity.probe({})).ready).toBe(true);
    await waitFor("the back-off and a check to pass", () => performance.now() > spawned + 7_000);
  }
  createOnNode(socketDir);
  await node.nodePublishVolume(publishRequest(volume));
  expect(await talkToAgent(volume.targetPath)).toBe("pong ping");
  await node.nodeUnpublishVolume(unpublishRequest(volume));
  removeVolume(volume);
  identity.close();
  node.close();
  expect(driver.proc.exitCode).toBeNull();
  expect(driver.stderr).not.toContain("restarting");
});
