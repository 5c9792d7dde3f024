// Starts the compiled driver as a process, the way a DaemonSet or systemd would.
import { existsSync, lstatSync, mkdtempSync, readFileSync, readlinkSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import type { ClientOptions } from "@grpc/grpc-js";
import type { Subprocess } from "bun";
import { Controller, Identity, Node } from "../../src/gen/csi/v1/csi_pb.ts";
import { createClient } from "../../src/rpc/client.ts";
import { PATIENCE_MS, waitFor } from "./wait.ts";

export const BINARY = resolve(import.meta.dir, "../../dist/spiffe-csi-driver");

export interface DriverOptions {
  workloadApiSocketDir: string;
  csiSocketPath: string;
  args?: string[];
  env?: Record<string, string>;
}

export class DriverProcess {
  private stderrText = "";
  private readonly reading: Promise<void>;

  constructor(readonly proc: Subprocess<"ignore", "pipe", "pipe">) {
    this.reading = (async () => {
      const decoder = new TextDecoder();
      for await (const chunk of proc.stderr) this.stderrText += decoder.decode(chunk);
    })();
  }

  /** Everything the driver wrote to stderr so far. */
  get stderr(): string {
    return this.stderrText;
  }

  async exited(): Promise<{ code: number | null; stderr: string }> {
    const code = await this.proc.exited;
    await this.reading;
    return { code, stderr: this.stderrText };
  }

  async stop(signal: NodeJS.Signals = "SIGTERM"): Promise<{ code: number | null; stderr: string }> {
    this.proc.kill(signal);
    return this.exited();
  }
}

export function spawnDriver(argv: string[], env: Record<string, string> = {}): DriverProcess {
  if (!existsSync(BINARY)) throw new Error(`${BINARY} is missing: run npm run build first`);
  return new DriverProcess(
    Bun.spawn([BINARY, ...argv], {
      stdin: "ignore",
      stdout: "pipe",
      stderr: "pipe",
      env: { PATH: process.env.PATH ?? "/usr/bin:/bin", ...env },
    }),
  );
}

export function clients(csiSocketPath: string, options: ClientOptions = {}) {
  const address = `unix://${csiSocketPath}`;
  return {
    identity: createClient(Identity, address, options),
    controller: createClient(Controller, address, options),
    node: createClient(Node, address, options),
  };
}

/** Starts the driver with the reference DaemonSet's style of flags and waits until it serves. */
export async function startDriver(options: DriverOptions): Promise<DriverProcess> {
  const driver = spawnDriver(
    [
      "-workload-api-socket-dir",
      options.workloadApiSocketDir,
      "-csi-socket-path",
      options.csiSocketPath,
      ...(options.args ?? []),
    ],
    { MY_NODE_NAME: "node-1", ...options.env },
  );
  await waitServing(driver, options.csiSocketPath);
  return driver;
}

export async function waitServing(
  driver: DriverProcess,
  csiSocketPath: string,
  timeoutMs = PATIENCE_MS,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  const running = () => {
    if (driver.proc.exitCode !== null) {
      throw new Error(`driver exited with ${driver.proc.exitCode}: ${driver.stderr}`);
    }
  };
  // Wait for the socket file first: a client started before it exists backs off for a second.
  await waitFor(
    `a socket at ${csiSocketPath}`,
    () => {
      running();
      return isSocket(csiSocketPath);
    },
    timeoutMs,
  );
  // A stale socket from a killed driver refuses connections until the new one replaces it. A
  // fresh client each try: a refused channel would back off for a second.
  let refusal = "";
  await waitFor(
    () => `the driver to answer Probe on ${csiSocketPath} (last answer: ${refusal})`,
    async () => {
      running();
      const { identity } = clients(csiSocketPath);
      try {
        await identity.probe({}, { deadline });
        return true;
      } catch (error) {
        refusal = (error as Error).message;
        return false;
      } finally {
        identity.close();
      }
    },
    Math.max(deadline - Date.now(), 0),
  );
}

function isSocket(path: string): boolean {
  try {
    return lstatSync(path).isSocket();
  } catch {
    return false;
  }
}

export function tempDir(prefix: string): string {
  return mkdtempSync(join(tmpdir(), `spiffe-csi-${prefix}-`));
}

/**
 * Mount tests must run in a mount namespace of their own (`npm test` runs them under
 * `unshare --mount --propagation private`), so that a crash cannot leave mounts on the machine.
 * Proof: some ancestor process is in another mount namespace than this one.
 */
export function assertPrivateMountNamespace(): void {
  const own = readlinkSync("/proc/self/ns/mnt");
  for (let pid = parentOf("self"); pid > 1; pid = parentOf(String(pid))) {
    let theirs: string;
    try {
      theirs = readlinkSync(`/proc/${pid}/ns/mnt`);
    } catch {
      break;
    }
    if (theirs !== own) return;
  }
  throw new Error(
    "mount tests must run in a private mount namespace: use `npm test`, or `unshare --mount --propagation private bun test`",
  );
}

function parentOf(pid: string): number {
  // /proc/<pid>/stat: "pid (comm) state ppid ..."; comm may hold spaces, so split after ")".
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  return Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
}
