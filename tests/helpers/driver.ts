// Starts the compiled driver as a process, the way a DaemonSet or systemd would.
import { existsSync, mkdtempSync, readlinkSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import type { Subprocess } from "bun";
import { Controller, Identity, Node } from "../../src/gen/csi/v1/csi_pb.ts";
import { createClient } from "../../src/grpc/client.ts";

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

export function clients(csiSocketPath: string) {
  const address = `unix://${csiSocketPath}`;
  return {
    identity: createClient(Identity, address),
    controller: createClient(Controller, address),
    node: createClient(Node, address),
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

export async function waitServing(driver: DriverProcess, csiSocketPath: string): Promise<void> {
  const { identity } = clients(csiSocketPath);
  try {
    for (let attempt = 0; ; attempt++) {
      if (driver.proc.exitCode !== null) {
        throw new Error(`driver exited with ${driver.proc.exitCode}: ${driver.stderr}`);
      }
      try {
        await identity.probe({}, { deadline: Date.now() + 1000 });
        return;
      } catch (error) {
        if (attempt > 200) throw error;
        await Bun.sleep(25);
      }
    }
  } finally {
    identity.close();
  }
}

export function tempDir(prefix: string): string {
  return mkdtempSync(join(tmpdir(), `spiffe-csi-${prefix}-`));
}

/**
 * Mount tests must run in a private mount namespace (`npm test` runs them under
 * `unshare --mount --propagation private`), so that a crash cannot leave mounts on the machine.
 */
export function assertPrivateMountNamespace(): void {
  if (readlinkSync("/proc/self/ns/mnt") === readlinkSync("/proc/1/ns/mnt")) {
    throw new Error(
      "mount tests must run in a private mount namespace: use `npm test`, or `unshare --mount --propagation private bun test`",
    );
  }
}
