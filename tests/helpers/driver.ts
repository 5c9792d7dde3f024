// The harness: starts the compiled driver as a process, the way a DaemonSet or systemd would,
// waits for it on conditions, and stops it. Every test that runs the binary goes through here.
import { setDefaultTimeout } from "bun:test";
import { existsSync, lstatSync, mkdtempSync, readFileSync, readlinkSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import type { ClientOptions } from "@grpc/grpc-js";
import type { Subprocess } from "bun";
import { Controller, Identity, Node } from "../../src/gen/csi/v1/csi_pb.ts";
import { createClient } from "../../src/rpc/client.ts";
import { PATIENCE_MS, waitFor } from "./wait.ts";

export const BINARY = resolve(import.meta.dir, "../../dist/spiffe-csi-driver");

/** The node name every driver started here gets, through MY_NODE_NAME. */
export const NODE_NAME = "node-1";

export interface DriverOptions {
  workloadApiSocketDir: string;
  csiSocketPath: string;
  /** More flags, after the two above. */
  args?: string[];
  env?: Record<string, string>;
  /** A command the binary runs under (nsenter, setpriv, unshare ...). */
  prefix?: string[];
}

/** A running binary: its stderr as it comes, its exit, and a stop. */
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

  /** Waits until the driver has logged `text`; fails at once if it exits first. */
  async waitForLog(text: string, timeoutMs = PATIENCE_MS): Promise<void> {
    await waitFor(
      () => `the driver to log ${JSON.stringify(text)} (it logged: ${this.stderrText})`,
      () => {
        if (this.stderrText.includes(text)) return true;
        if (this.proc.exitCode !== null) {
          throw new Error(`driver exited with ${this.proc.exitCode}: ${this.stderrText}`);
        }
        return false;
      },
      timeoutMs,
    );
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

/** Starts the binary with `argv`; the environment holds PATH and `env` only. */
export function spawnDriver(
  argv: string[],
  env: Record<string, string> = {},
  prefix: string[] = [],
  binary = BINARY,
): DriverProcess {
  if (!existsSync(binary)) throw new Error(`${binary} is missing: run npm run build first`);
  return new DriverProcess(
    Bun.spawn([...prefix, binary, ...argv], {
      stdin: "ignore",
      stdout: "pipe",
      stderr: "pipe",
      env: { PATH: process.env.PATH ?? "/usr/bin:/bin", ...env },
    }),
  );
}

/** Runs the binary (a subcommand, or a start that fails) to its end: exit status and output. */
export async function runBinary(
  argv: string[],
  env: Record<string, string> = {},
  prefix: string[] = [],
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const driver = spawnDriver(argv, env, prefix);
  const stdout = new Response(driver.proc.stdout).text();
  const { code, stderr } = await driver.exited();
  return { code, stdout: await stdout, stderr };
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
    { MY_NODE_NAME: NODE_NAME, ...options.env },
    options.prefix,
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

/**
 * A command prefix that runs a program in a private mount namespace of its own, after `script`
 * (run by sh with `args` as $0, $1, ...; it ends with `exec "$@"`, which keeps the pid).
 */
export function inPrivateMountNamespace(script: string, ...args: string[]): string[] {
  return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, ...args];
}

function parentOf(pid: string): number {
  // /proc/<pid>/stat: "pid (comm) state ppid ..."; comm may hold spaces, so split after ")".
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  return Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
}

/**
 * The set-up of a test file of real mounts and real processes: it runs in a private mount
 * namespace (see above), and every test and hook gets `timeoutMs`, generous for a loaded machine
 * (each waits on the driver's process and the mount/umount processes it spawns).
 */
export function mountTestFile(timeoutMs = 120_000): void {
  assertPrivateMountNamespace();
  setDefaultTimeout(timeoutMs);
}
