// The agent's directory missing at start, and `mount`/`umount` failing or hanging: clear errors,
// bounded waits, no half-made state.
import { afterAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import {
  chmodSync,
  existsSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from "node:fs";
import { join } from "node:path";
import { status } from "@grpc/grpc-js";
import { startAgent, talkToAgent } from "../../helpers/agent.ts";
import {
  assertPrivateMountNamespace,
  clients,
  type DriverProcess,
  startDriver,
  tempDir,
} from "../../helpers/driver.ts";
import {
  mountsAt,
  podVolume,
  prepareVolume,
  publishRequest,
  unpublishRequest,
} from "../../helpers/kubelet.ts";
import { rpcFailure } from "../../helpers/rpc.ts";

assertPrivateMountNamespace();
// Every test here starts drivers and waits on the mount/umount processes they spawn.
setDefaultTimeout(120_000);

const root = tempDir("faults");
const kubeletRoot = join(root, "kubelet");
const running: DriverProcess[] = [];

afterAll(async () => {
  for (const driver of running) if (driver.proc.exitCode === null) await driver.stop("SIGKILL");
  rmSync(root, { recursive: true, force: true });
}, 60_000);

function prepared() {
  const volume = podVolume(kubeletRoot);
  prepareVolume(volume);
  return volume;
}

/** A stand-in for `mount` or `umount` on PATH, with the real other one beside it. */
function standIn(name: "mount" | "umount", script: string): string {
  const bin = join(root, `bin-${name}-${Math.random().toString(36).slice(2)}`);
  mkdirSync(bin);
  writeFileSync(join(bin, name), `#!/bin/sh\n${script}\n`);
  chmodSync(join(bin, name), 0o755);
  return `${bin}:${process.env.PATH}`;
}

async function driverWith(
  name: string,
  socketDir: string,
  env: Record<string, string> = {},
  args: string[] = [],
) {
  const csiSocketPath = join(root, name, "csi.sock");
  const driver = await startDriver({ workloadApiSocketDir: socketDir, csiSocketPath, env, args });
  running.push(driver);
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
    const waitFor = async (what: string, condition: () => boolean) => {
      for (let waited = 0; !condition(); waited += 10) {
        if (waited > 30_000) throw new Error(`timed out waiting for ${what}: ${driver.stderr}`);
        await Bun.sleep(10);
      }
    };
    await waitFor(
      "the mount to start",
      () => existsSync(started) && readFileSync(started, "utf8").endsWith("\n"),
    );
    driver.proc.kill("SIGTERM");
    await waitFor("the drain to start", () => driver.stderr.includes("shutting down"));
    driver.proc.kill("SIGTERM");
    await waitFor("the second signal to be logged", () =>
      driver.stderr.includes("already shutting down"),
    );
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
