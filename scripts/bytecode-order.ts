// `npm run bytecode-order`: records which functions the driver runs, so that the build lays their
// bytecode out together at the front of the executable (Bun's profile-guided bytecode layout,
// `compile.bytecodeOrder` in scripts/build.ts): the driver then reads and keeps less of itself in
// memory (docs/benchmarks.md). Runs the built driver the way a node does, in a private mount
// namespace: serving publishes, re-publishes, stats and unpublishes with SELinux labelling on (so
// that its code is placed too), health and metrics scrapes, and the probe command. Writes one
// profile per command to scripts/bytecode-order/: the server's and the probe's. (The inspector
// child is not recorded: Bun writes a profile at a clean exit, and the driver ends its children
// with SIGKILL; they come and go, and are not what stays in memory at rest.) A profile names
// functions by a hash of their syntax, so one recorded before a change still places every
// function that did not change; record again when much of src/ changed.
import { existsSync, mkdirSync, readFileSync, renameSync, rmSync, statSync } from "node:fs";
import { join, resolve } from "node:path";
import { builtInClient } from "../tests/bench/clients.ts";
import { startAgent } from "../tests/helpers/agent.ts";
import {
  assertPrivateMountNamespace,
  BINARY,
  spawnDriver,
  tempDir,
  waitServing,
} from "../tests/helpers/driver.ts";
import { freePort } from "../tests/helpers/port.ts";

assertPrivateMountNamespace();

const OUT_DIR = resolve(import.meta.dir, "bytecode-order");
const VOLUMES = 300;
const PHASE_LIMIT_MS = 60_000;

const root = tempDir("bytecode-order");
const recorded = join(root, "recorded");
mkdirSync(recorded);
const socketDir = join(root, "agent");
mkdirSync(socketDir);
const agent = startAgent(socketDir);
const csiSocketPath = join(root, "csi", "csi.sock");
const healthPort = freePort();
const profileEnv = { BUN_BYTECODE_ORDER_OUT: join(recorded, "%p.order") };

const driver = spawnDriver(
  [
    "--workload-api-socket-dir",
    socketDir,
    "--csi-socket-path",
    csiSocketPath,
    "--health-addr",
    `127.0.0.1:${healthPort}`,
    "--selinux-label",
    "on",
  ],
  { MY_NODE_NAME: "profile-node", ...profileEnv },
);
try {
  await waitServing(driver, csiSocketPath);
  const client = builtInClient(PHASE_LIMIT_MS);
  for (const [round, concurrency] of [1, 16, 1].entries()) {
    const results = await client.ops(
      csiSocketPath,
      join(root, `kubelet-${round}`),
      VOLUMES,
      concurrency,
    );
    const failed = Object.entries(results).find(([, phase]) => phase.errors > 0);
    if (failed) throw new Error(`${failed[0]} failed: ${failed[1].firstError}`);
    for (const path of ["/healthz", "/readyz", "/metrics"]) {
      const response = await fetch(`http://127.0.0.1:${healthPort}${path}`);
      if (!response.ok) throw new Error(`${path} answered ${response.status}`);
      await response.arrayBuffer();
    }
  }
  const probe = Bun.spawn([BINARY, "probe", "--csi-socket-path", csiSocketPath], {
    stdin: "ignore",
    stdout: "ignore",
    stderr: "pipe",
    env: { PATH: process.env.PATH ?? "/usr/bin:/bin", ...profileEnv },
  });
  if ((await probe.exited) !== 0) {
    throw new Error(`probe failed: ${await new Response(probe.stderr).text()}`);
  }
  const { code, stderr } = await driver.stop();
  if (code !== 0) throw new Error(`the driver exited with ${code}: ${stderr}`);

  const profileOf = (pid: number) => join(recorded, `${pid}.order`);
  const kept: [string, string][] = [
    ["serve.order", profileOf(driver.proc.pid)],
    ["probe.order", profileOf(probe.pid)],
  ];
  mkdirSync(OUT_DIR, { recursive: true });
  for (const [name, from] of kept) {
    if (!existsSync(from) || !readFileSync(from, "utf8").startsWith("v2\n")) {
      throw new Error(`no profile was written for ${name}`);
    }
    renameSync(from, join(OUT_DIR, name));
    console.log(`${join(OUT_DIR, name)}: ${statSync(join(OUT_DIR, name)).size} bytes`);
  }
} finally {
  if (driver.proc.exitCode === null) await driver.stop("SIGKILL");
  agent.stop(true);
  rmSync(root, { recursive: true, force: true });
}
