import { afterAll, expect } from "bun:test";
import { mkdirSync, rmdirSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { AGENT_SOCKET, startAgent } from "./agent.ts";
import {
  clients,
  type DriverOptions,
  type DriverProcess,
  mountTestFile,
  spawnDriver,
  startDriver,
  tempDir,
} from "./driver.ts";
import { mountsUnder, type PodVolume, preparedVolume } from "./kubelet.ts";

export interface TestbedOptions {
  /** Start a stand-in for the SPIFFE agent in the socket directory (default: yes). */
  agent?: boolean;
}

/**
 * A test file's directories and a running stand-in for the SPIFFE agent: the agent's socket
 * directory, a kubelet root and a CSI socket path. Drivers started through it are stopped, and
 * the directories removed, after the file's tests; a mount left behind fails the file.
 */
export function testbed(prefix: string, { agent = true }: TestbedOptions = {}) {
  const root = tempDir(prefix);
  const socketDir = join(root, "agent-sockets");
  mkdirSync(socketDir);
  const drivers: DriverProcess[] = [];
  const cleanups: (() => Promise<void> | void)[] = [];
  let standIns = 0;
  const bed = {
    root,
    socketDir,
    kubeletRoot: join(root, "kubelet"),
    csiSocketPath: join(root, "plugin", "csi.sock"),
    agent: agent ? startAgent(socketDir) : (undefined as ReturnType<typeof startAgent> | undefined),

    /**
     * Stops the agent and removes its socket; with `replaceDir`, the socket directory is removed
     * and made again too, as an agent re-creating it would. Then a new agent starts there.
     */
    restartAgent({ replaceDir = false } = {}): void {
      bed.agent?.stop(true);
      rmSync(join(socketDir, AGENT_SOCKET), { force: true });
      if (replaceDir) {
        rmdirSync(socketDir);
        mkdirSync(socketDir);
      }
      bed.agent = startAgent(socketDir);
    },

    /**
     * A PATH whose first directory holds a stand-in for `program`: a shell script (after its
     * `#!/bin/sh` line), with the real programs behind it.
     */
    standIn(program: "mount" | "umount", script: string): string {
      const bin = bed.dir(`stand-in-${++standIns}-${program}`);
      writeFileSync(join(bin, program), `#!/bin/sh\n${script}\n`, { mode: 0o755 });
      return `${bin}:${process.env.PATH}`;
    },

    /** A directory of its own below the root, made now. */
    dir(...names: string[]): string {
      const dir = join(root, ...names);
      mkdirSync(dir, { recursive: true });
      return dir;
    },

    /** Starts a driver on the bed's directories (or those given) and waits until it serves. */
    async start(args: string[] = [], options: Partial<DriverOptions> = {}) {
      const driver = await startDriver({
        workloadApiSocketDir: socketDir,
        csiSocketPath: bed.csiSocketPath,
        args,
        ...options,
      });
      drivers.push(driver);
      return driver;
    },

    /** Starts the binary with exactly `argv`, without waiting for anything. */
    spawn(argv: string[], env: Record<string, string> = {}, prefix: string[] = []) {
      const driver = spawnDriver(argv, env, prefix);
      drivers.push(driver);
      return driver;
    },

    /** Stops this driver with the others at the end, if it still runs then. */
    track(driver: DriverProcess): DriverProcess {
      drivers.push(driver);
      return driver;
    },

    /** A pod volume whose directory the kubelet has prepared. */
    volume(volumeName?: string): PodVolume {
      return preparedVolume(bed.kubeletRoot, volumeName);
    },

    /** Clients of the bed's CSI socket. */
    clients: () => clients(bed.csiSocketPath),

    /** Stops the drivers still running, as the kubelet's node does (SIGTERM); their logs. */
    async stopDrivers(): Promise<string[]> {
      const logs: string[] = [];
      for (const driver of drivers) {
        if (driver.proc.exitCode === null) logs.push((await driver.stop()).stderr);
      }
      return logs;
    },

    /** Runs at the end, before the drivers stop (e.g. unpublishing what the tests left). */
    beforeCleanup(cleanup: () => Promise<void> | void): void {
      cleanups.push(cleanup);
    },
  };
  afterAll(async () => {
    for (const cleanup of cleanups) await cleanup();
    for (const driver of drivers) if (driver.proc.exitCode === null) await driver.stop("SIGKILL");
    bed.agent?.stop(true);
    // Never delete through a mount: a test that left one fails here, and its files stay.
    expect(mountsUnder(root)).toBe(0);
    rmSync(root, { recursive: true, force: true });
  }, 120_000);
  return bed;
}

export type Testbed = ReturnType<typeof testbed>;

/**
 * The set-up of a test file of real mounts (mountTestFile: a private mount namespace, generous
 * timeouts) and its testbed.
 */
export function mountTestbed(prefix: string, options: TestbedOptions = {}) {
  mountTestFile();
  return testbed(prefix, options);
}
