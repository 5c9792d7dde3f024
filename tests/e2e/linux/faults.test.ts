// The agent's directory missing at start, and `mount`/`umount` failing or hanging: clear errors,
// bounded waits, no half-made state.
import { describe, expect, setDefaultTimeout, test } from "bun:test";
import { existsSync, mkdirSync, readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { status } from "@grpc/grpc-js";
import { startAgent, talkToAgent } from "../../helpers/agent.ts";
import { assertPrivateMountNamespace, clients } from "../../helpers/driver.ts";
import { mountsAt, publishRequest, unpublishRequest } from "../../helpers/kubelet.ts";
import { rpcFailure } from "../../helpers/rpc.ts";
import { testbed } from "../../helpers/testbed.ts";
import { waitFor } from "../../helpers/wait.ts";

assertPrivateMountNamespace();
// Every test here starts drivers and waits on the mount/umount processes they spawn.
setDefaultTimeout(120_000);

const bed = testbed("faults", { agent: false });
const { root } = bed;
const prepared = () => bed.volume();
const standIn = bed.standIn;

async function driverWith(
  name: string,
  socketDir: string,
  env: Record<string, string> = {},
  args: string[] = [],
) {
  const csiSocketPath = join(root, name, "csi.sock");
  const driver = await bed.start(args, { workloadApiSocketDir: socketDir, csiSocketPath, env });
  return { driver, node: clients(csiSocketPath).node };
}

describe("the agent's directory missing at start", () => {
  test("the driver starts and serves; publish is UNAVAILABLE until the directory appears", async () => {
    const socketDir = join(root, "late-agent");
    const { driver, node } = await driverWith("late", socketDir);
    expect(driver.stderr).toContain("the Workload API socket directory does not exist yet");
    const volume = prepared();
    const error = await rpcFailure(node.nodePublishVolume(publishRequest(volume)));
    expect(error.code).toBe(status.UNAVAILABLE);
    expect(error.details).toContain("does not exist (is the SPIFFE agent running?)");
    expect(existsSync(volume.targetPath)).toBe(false);

    mkdirSync(socketDir);
    const agent = startAgent(socketDir);
    try {
      await node.nodePublishVolume(publishRequest(volume));
      expect(await talkToAgent(volume.targetPath)).toBe("pong ping");
      await node.nodeUnpublishVolume(unpublishRequest(volume));
    } finally {
      agent.stop(true);
    }
  });
});

describe("mount and umount failing or hanging", () => {
  const socketDir = join(root, "agent");
  mkdirSync(socketDir, { recursive: true });

  test("a hanging mount is killed after --mount-timeout: DEADLINE_EXCEEDED, no directory left", async () => {
    const { node } = await driverWith(
      "hanging-mount",
      socketDir,
      { PATH: standIn("mount", "exec sleep 60") },
      ["--mount-timeout", "0.5"],
    );
    const volume = prepared();
    const started = performance.now();
    const error = await rpcFailure(node.nodePublishVolume(publishRequest(volume)));
    // Bounded by the timeout, not the minute the stand-in sleeps.
    expect(performance.now() - started).toBeLessThan(30_000);
    expect(error.code).toBe(status.DEADLINE_EXCEEDED);
    expect(error.details).toContain("did not finish in time and was killed");
    expect(existsSync(volume.targetPath)).toBe(false);
    expect(readdirSync(volume.volumeDir)).toEqual(["vol_data.json"]);
  });

  test("a failing umount: INTERNAL with its message; the mount and directory stay for a retry", async () => {
    const healthy = await driverWith("healthy", socketDir);
    const volume = prepared();
    await healthy.node.nodePublishVolume(publishRequest(volume));
    const { node } = await driverWith("failing-umount", socketDir, {
      PATH: standIn("umount", "echo 'umount: target is busy.' >&2; exit 32"),
    });
    const error = await rpcFailure(node.nodeUnpublishVolume(unpublishRequest(volume)));
    expect(error.code).toBe(status.INTERNAL);
    expect(error.details).toContain("umount: target is busy.");
    expect(mountsAt(volume.targetPath)).toBe(1);
    // The kubelet retries; with a working umount the retry succeeds.
    await healthy.node.nodeUnpublishVolume(unpublishRequest(volume));
    expect(mountsAt(volume.targetPath)).toBe(0);
    expect(existsSync(volume.targetPath)).toBe(false);
  });

  test("a hanging umount: DEADLINE_EXCEEDED within the timeout; the mount stays", async () => {
    const healthy = await driverWith("healthy-2", socketDir);
    const volume = prepared();
    await healthy.node.nodePublishVolume(publishRequest(volume));
    const { node } = await driverWith(
      "hanging-umount",
      socketDir,
      { PATH: standIn("umount", "exec sleep 60") },
      ["--mount-timeout", "0.5"],
    );
    const error = await rpcFailure(node.nodeUnpublishVolume(unpublishRequest(volume)));
    expect(error.code).toBe(status.DEADLINE_EXCEEDED);
    expect(mountsAt(volume.targetPath)).toBe(1);
    await healthy.node.nodeUnpublishVolume(unpublishRequest(volume));
    expect(mountsAt(volume.targetPath)).toBe(0);
  });

  test("a mount that exits 0 without mounting: INTERNAL, no directory left", async () => {
    const { node } = await driverWith("lying-mount", socketDir, {
      PATH: standIn("mount", "exit 0"),
    });
    const volume = prepared();
    const error = await rpcFailure(node.nodePublishVolume(publishRequest(volume)));
    expect(error.code).toBe(status.INTERNAL);
    expect(error.details).toContain("mount reported success");
    expect(existsSync(volume.targetPath)).toBe(false);
  });

  test("a second SIGTERM during the drain is logged and ignored: the hung mount is killed by its timeout, the call answers, exit 0, no directory left", async () => {
    const started = join(root, "hung-mount-pid");
    const { driver, node } = await driverWith(
      "twice-terminated",
      socketDir,
      { PATH: standIn("mount", `echo $$ > ${started}; exec sleep 60`) },
      ["--mount-timeout", "3"],
    );
    const volume = prepared();
    const publish = rpcFailure(node.nodePublishVolume(publishRequest(volume)));
    await waitFor(
      "the mount to start",
      () => existsSync(started) && readFileSync(started, "utf8").endsWith("\n"),
    );
    driver.proc.kill("SIGTERM");
    await driver.waitForLog("shutting down");
    driver.proc.kill("SIGTERM");
    await driver.waitForLog("already shutting down");
    const error = await publish;
    expect(error.code).toBe(status.DEADLINE_EXCEEDED);
    const { code, stderr } = await driver.exited();
    expect(code).toBe(0);
    expect(stderr.match(/already shutting down/g)).toHaveLength(1);
    expect(existsSync(volume.targetPath)).toBe(false);
    // The hung mount was killed, not left running behind the driver.
    const pid = Number(readFileSync(started, "utf8"));
    expect(() => process.kill(pid, 0)).toThrow();
  }, 60_000);
});
