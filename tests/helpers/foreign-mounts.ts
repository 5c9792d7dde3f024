// The set-up of a test file that mounts file systems the driver does not own where it looks: a
// tmpfs of its own, so that whatever a test leaves mounted below it goes with it.
import { afterAll, afterEach, expect } from "bun:test";
import { chmodSync, chownSync, mkdirSync, rmSync } from "node:fs";
import { join } from "node:path";
import { startAgent } from "./agent.ts";
import { type DriverProcess, mountTestFile, startDriver, tempDir } from "./driver.ts";
import { FuseMount } from "./fuse.ts";
import { mountsUnder } from "./kubelet.ts";
import { rpcFailure } from "./rpc.ts";

export interface ForeignMountsBedOptions {
  /** The owner of the agent's socket directory (default: root). */
  agentUid?: number;
  /** Stop the drivers and FUSE servers after each test (default), or only after the file's. */
  stopAfterEach?: boolean;
}

/**
 * The set-up of a test file of real mounts (mountTestFile: a private mount namespace, generous
 * timeouts) on a tmpfs mounted at a new temporary root, holding the agent's socket directory (a
 * stand-in for the SPIFFE agent serving in it) and a kubelet root. The drivers and FUSE servers
 * in `running` and `fuses` are stopped after each test (or after the file's tests); after the
 * file's tests the root is unmounted with all below it, and a mount left then fails the file.
 */
export function foreignMountsBed(
  name: string,
  { agentUid, stopAfterEach = true }: ForeignMountsBedOptions = {},
) {
  mountTestFile();
  const root = tempDir(name);
  const socketDir = join(root, "agent-sockets");
  const kubeletRoot = join(root, "kubelet");
  const running: DriverProcess[] = [];
  const fuses: FuseMount[] = [];

  Bun.spawnSync(["mount", "-t", "tmpfs", `${name}-test`, root]);
  chmodSync(root, 0o755);
  mkdirSync(socketDir);
  if (agentUid !== undefined) chownSync(socketDir, agentUid, agentUid);
  mkdirSync(kubeletRoot);
  const agent = startAgent(socketDir);

  async function stopAll(): Promise<void> {
    for (const driver of running.splice(0)) {
      if (driver.proc.exitCode === null) await driver.stop("SIGKILL");
    }
    // Ending a server aborts its connection: whoever waits on it gets ENOTCONN, and it unmounts.
    for (const fuse of fuses.splice(0)) await fuse.stop();
  }
  if (stopAfterEach) afterEach(stopAll, 60_000);

  afterAll(async () => {
    await stopAll();
    agent.stop(true);
    for (let tries = 0; tries < 20 && mountsUnder(root) > 0; tries++) {
      Bun.spawnSync(["umount", "-R", "-l", root]);
    }
    Bun.spawnSync(["umount", "-l", root]);
    expect(mountsUnder(root)).toBe(0);
    rmSync(root, { recursive: true, force: true });
  }, 60_000);

  const bed = {
    root,
    socketDir,
    kubeletRoot,
    agent,
    running,
    fuses,

    /** A driver on the bed's agent directory, its CSI socket in `name` below the root. */
    async startDriver(name: string, args: string[] = []) {
      const csiSocketPath = join(root, name, "csi.sock");
      const driver = await startDriver({ workloadApiSocketDir: socketDir, csiSocketPath, args });
      running.push(driver);
      return { driver, csiSocketPath };
    },

    /** A FUSE file system at `mountPoint` (../helpers/fuse.ts), stopped with the others. */
    async fuse(mountPoint: string, options: Parameters<typeof FuseMount.start>[1] = {}) {
      const fuse = await FuseMount.start(mountPoint, options);
      fuses.push(fuse);
      return fuse;
    },

    /** A silent FUSE file system at `mountPoint`, hung before the driver asks anything of it. */
    async silentFuse(mountPoint: string, options: Parameters<typeof FuseMount.start>[1] = {}) {
      const fuse = await bed.fuse(mountPoint, options);
      await fuse.hang();
      return fuse;
    },
  };
  return bed;
}

/** `call`'s failure; fails the test when it took `withinMs` or longer. */
export async function failsWithin(withinMs: number, call: Promise<unknown>) {
  const started = performance.now();
  const failure = await rpcFailure(call);
  expect(performance.now() - started).toBeLessThan(withinMs);
  return failure;
}
