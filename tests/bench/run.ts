// `npm run bench`: the driver's latency, throughput, start time and memory, measured the way the
// kubelet uses it. Runs inside a private mount namespace; prints a markdown table, writes JSON
// and docs/benchmarks.md.

import { existsSync, mkdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { cpus, totalmem } from "node:os";
import { join, resolve } from "node:path";
import { parseMountInfo } from "../../src/linux/mountinfo.ts";
import { AGENT_SOCKET, startAgent } from "../helpers/agent.ts";
import {
  assertPrivateMountNamespace,
  type DriverProcess,
  spawnDriver,
  tempDir,
  waitServing,
} from "../helpers/driver.ts";
import { residentMemory } from "../helpers/kubelet.ts";
import type { Job, PhaseResult } from "./load.ts";

assertPrivateMountNamespace();

const repo = resolve(import.meta.dir, "../..");
const quick = process.env.BENCH_QUICK === "1";
// BENCH_SELINUX_LABEL=on runs the driver with --selinux-label on: every publish then reads the
// labels of the directory and of each entry in it.
const selinuxLabel = process.env.BENCH_SELINUX_LABEL;
// BENCH_RECURSIVE_BIND=1 runs the driver with --recursive-bind, with a read-only file system in
// the directory (SPIFFEFS's stand-in) on a shared mount: every publish then reads the mount
// table, binds recursively and makes the target a slave, the most a publish does.
const recursiveBind = process.env.BENCH_RECURSIVE_BIND === "1";
const MOUNT_LEVELS = quick ? [20, 1000] : [20, 1_000, 10_000];
const CONCURRENCY = [1, 16];
const VOLUMES = quick ? { 1: 100, 16: 200 } : { 1: 300, 16: 800 };
const CYCLES = quick ? 1_000 : 10_000;
const WARMUP_CYCLES = 1_000;
const PHASE_LIMIT_MS = 20_000;
const STARTS = 7;
// Memory is read at rest: the driver collects garbage after a second without calls.
const SETTLE_MS = 2500;

const root = tempDir("bench");
const socketDir = join(root, "agent-sockets");
mkdirSync(socketDir);
// The directory as a SPIRE agent lays it out: its socket and a link to it.
const agent = startAgent(socketDir);
symlinkSync(AGENT_SOCKET, join(socketDir, "api.sock"));
const csiSocketPath = join(root, "plugin", "csi.sock");

function progress(line: string): void {
  process.stderr.write(`\r\x1b[K${line}`);
}

function run(argv: string[]): void {
  const result = Bun.spawnSync(argv, { stderr: "pipe" });
  if (result.exitCode !== 0) throw new Error(`${argv.join(" ")}: ${result.stderr.toString()}`);
}

if (recursiveBind) {
  const spiffefs = join(socketDir, "spiffefs");
  mkdirSync(spiffefs);
  run(["mount", "-t", "tmpfs", "-o", "ro", "bench-spiffefs", spiffefs]);
  run(["mount", "--make-shared", spiffefs]);
}

function mountCount(): number {
  return parseMountInfo(readFileSync("/proc/self/mountinfo", "utf8")).length;
}

/**
 * Brings the namespace's mount table to at least `total` entries. Bind mounts are made in
 * blocks: one directory gets 99 binds, then each recursive bind of it adds 100 at once.
 */
function growMountTable(total: number): void {
  const background = join(root, "background");
  mkdirSync(background, { recursive: true });
  const block = join(background, "block");
  if (mountCount() < total && !readFileSync("/proc/self/mountinfo", "utf8").includes(block)) {
    mkdirSync(block);
    run(["mount", "-t", "tmpfs", "bench-block", block]);
    for (let i = 0; i < 99 && mountCount() < total; i++) {
      mkdirSync(join(block, String(i)));
      run(["mount", "--bind", socketDir, join(block, String(i))]);
    }
  }
  for (let copy = 0; mountCount() + 100 <= total; copy++) {
    const target = join(background, `copy-${total}-${copy}`);
    mkdirSync(target);
    run(["mount", "--rbind", block, target]);
    progress(`making background mounts: ${mountCount()}/${total}`);
  }
  for (let i = 0; mountCount() < total; i++) {
    const target = join(background, `single-${total}-${i}`);
    mkdirSync(target);
    run(["mount", "--bind", socketDir, target]);
  }
}

/** Starts the driver; times exec to a listening socket and exec to the first answered Probe. */
async function startDriver(): Promise<{
  driver: DriverProcess;
  listenMs: number;
  startMs: number;
}> {
  const t0 = performance.now();
  const driver = spawnDriver(
    [
      "-workload-api-socket-dir",
      socketDir,
      "-csi-socket-path",
      csiSocketPath,
      ...(selinuxLabel ? ["--selinux-label", selinuxLabel] : []),
      ...(recursiveBind ? ["--recursive-bind"] : []),
    ],
    { MY_NODE_NAME: "bench-node" },
  );
  while (!existsSync(csiSocketPath)) await Bun.sleep(0.5);
  const listenMs = performance.now() - t0;
  await waitServing(driver, csiSocketPath);
  return { driver, listenMs, startMs: performance.now() - t0 };
}

async function load(
  job: Omit<Job, "csiSocketPath" | "kubeletRoot" | "phaseLimitMs">,
): Promise<Record<string, PhaseResult>> {
  const kubeletRoot = join(root, "kubelet", `${job.kind}-${Date.now()}`);
  const full: Job = { ...job, csiSocketPath, kubeletRoot, phaseLimitMs: PHASE_LIMIT_MS };
  const child = Bun.spawn(
    [process.execPath, join(import.meta.dir, "load.ts"), JSON.stringify(full)],
    {
      stdout: "pipe",
      stderr: "inherit",
      env: process.env,
    },
  );
  const output = await new Response(child.stdout).text();
  if ((await child.exited) !== 0) throw new Error(`load generator failed: ${output}`);
  rmSync(kubeletRoot, { recursive: true, force: true });
  return JSON.parse(output);
}

function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return Number.NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] ?? Number.NaN;
}

function median(values: number[]): number {
  return percentile(
    [...values].sort((a, b) => a - b),
    50,
  );
}

interface Cell {
  mounts: number;
  concurrency: number;
  operation: string;
  count: number;
  errors: number;
  p50Ms: number;
  p99Ms: number;
  opsPerSec: number;
}

function cell(mounts: number, concurrency: number, operation: string, result: PhaseResult): Cell {
  const sorted = [...result.latenciesMs].sort((a, b) => a - b);
  return {
    mounts,
    concurrency,
    operation,
    count: result.count,
    errors: result.errors,
    p50Ms: percentile(sorted, 50),
    p99Ms: percentile(sorted, 99),
    opsPerSec: (result.count / result.elapsedMs) * 1000,
  };
}

const fixed = (n: number, digits = 2) => (Number.isFinite(n) ? n.toFixed(digits) : "-");

// 1. Start-up time: exec to a socket that answers Probe.
const startTimes: number[] = [];
const listenTimes: number[] = [];
for (let i = 0; i < STARTS; i++) {
  progress(`start-up ${i + 1}/${STARTS}`);
  const { driver, listenMs, startMs } = await startDriver();
  startTimes.push(startMs);
  listenTimes.push(listenMs);
  await driver.stop();
}

// 2. Memory: idle, after a warm-up, after CYCLES publish/unpublish cycles, peak.
progress("memory: idle");
let { driver } = await startDriver();
await Bun.sleep(SETTLE_MS);
const idle = residentMemory(driver.proc.pid);
progress(`memory: ${WARMUP_CYCLES} warm-up cycles`);
const warmup = await load({ kind: "cycles", volumes: WARMUP_CYCLES, concurrency: 16 });
await Bun.sleep(SETTLE_MS);
const warm = residentMemory(driver.proc.pid);
progress(`memory: ${CYCLES} publish/unpublish cycles`);
const cycles = await load({ kind: "cycles", volumes: CYCLES, concurrency: 16 });
await Bun.sleep(SETTLE_MS);
const afterCycles = residentMemory(driver.proc.pid);
const cycleErrors = (warmup.cycle?.errors ?? 0) + (cycles.cycle?.errors ?? 0);
await driver.stop();

// 3. The matrix: mounts on the node x concurrency x operation.
const cells: Cell[] = [];
({ driver } = await startDriver());
// Steady state is what is measured: the first calls of a fresh process run cold code.
progress("matrix: warm-up");
await load({ kind: "cycles", volumes: WARMUP_CYCLES / 2, concurrency: 16 });
for (const mounts of MOUNT_LEVELS) {
  growMountTable(mounts);
  const actualMounts = mountCount();
  for (const concurrency of CONCURRENCY) {
    progress(`mounts ${actualMounts}, concurrency ${concurrency}`);
    const volumes = VOLUMES[concurrency as 1 | 16];
    const results = await load({ kind: "ops", volumes, concurrency });
    for (const [operation, result] of Object.entries(results)) {
      cells.push(cell(mounts, concurrency, operation, result));
      if (result.errors > 0)
        process.stderr.write(
          `\n${operation}: ${result.errors} errors, first: ${result.firstError}\n`,
        );
    }
  }
}
const peak = residentMemory(driver.proc.pid);
await driver.stop();
progress("");

// 4. Report.
const lookup = (mounts: number, concurrency: number, operation: string) =>
  cells.find(
    (c) => c.mounts === mounts && c.concurrency === concurrency && c.operation === operation,
  );
const p50 = (m: number, c: number, op: string) => lookup(m, c, op)?.p50Ms ?? Number.NaN;
const topMounts = MOUNT_LEVELS[MOUNT_LEVELS.length - 1] ?? 20;
const growth = afterCycles.rssMb - warm.rssMb;
const targets: [string, string, string, string, boolean][] = [
  [
    "publish p50, 1,000 mounts, c=1",
    "7.1 ms",
    "≤ 3.5 ms",
    `${fixed(p50(1000, 1, "publish"))} ms`,
    p50(1000, 1, "publish") <= 3.5,
  ],
  [
    "unpublish p50, 1,000 mounts, c=1",
    "6.7 ms",
    "≤ 3.4 ms",
    `${fixed(p50(1000, 1, "unpublish"))} ms`,
    p50(1000, 1, "unpublish") <= 3.4,
  ],
  [
    `publish p50, ${topMounts.toLocaleString("en")} vs 20 mounts`,
    "> 10x",
    "≤ 1.3x",
    `${fixed(p50(topMounts, 1, "publish") / p50(20, 1, "publish"))}x`,
    p50(topMounts, 1, "publish") / p50(20, 1, "publish") <= 1.3,
  ],
  [
    "publish throughput, 1,000 mounts, c=16",
    "208 ops/s",
    "≥ 400 ops/s",
    `${fixed(lookup(1000, 16, "publish")?.opsPerSec ?? Number.NaN, 0)} ops/s`,
    (lookup(1000, 16, "publish")?.opsPerSec ?? 0) >= 400,
  ],
  [
    "publish p50, 20 mounts, c=1",
    "1.7 ms",
    "≤ 3.0 ms",
    `${fixed(p50(20, 1, "publish"))} ms`,
    p50(20, 1, "publish") <= 3.0,
  ],
  ["idle resident memory", "9 MB", "≤ 45 MB", `${fixed(idle.rssMb, 1)} MB`, idle.rssMb <= 45],
  [
    `memory growth over ${CYCLES.toLocaleString("en")} cycles, after a warm-up`,
    "-",
    "≤ 5 MB",
    `${fixed(growth, 1)} MB`,
    growth <= 5,
  ],
  [
    `memory growth from the idle start to after ${(WARMUP_CYCLES + CYCLES).toLocaleString("en")} cycles`,
    "-",
    "≤ 5 MB",
    `${fixed(afterCycles.rssMb - idle.rssMb, 1)} MB`,
    afterCycles.rssMb - idle.rssMb <= 5,
  ],
  [
    "exec to serving (median)",
    "10 ms",
    "≤ 50 ms",
    `${fixed(median(startTimes), 1)} ms`,
    median(startTimes) <= 50,
  ],
];

const machine = `${cpus().length} cores (${cpus()[0]?.model.trim() ?? "unknown CPU"}), ${(totalmem() / 2 ** 30).toFixed(0)} GiB, Linux ${readFileSync("/proc/sys/kernel/osrelease", "utf8").trim()}, Bun ${Bun.version}`;
const lines = [
  `Machine: ${machine}. ${new Date().toISOString().slice(0, 10)}.${quick ? " Quick run (BENCH_QUICK=1)." : ""}${selinuxLabel ? ` --selinux-label ${selinuxLabel} (BENCH_SELINUX_LABEL).` : ""}${recursiveBind ? " --recursive-bind, a read-only file system in the directory on a shared mount (BENCH_RECURSIVE_BIND=1)." : ""}`,
  "",
  "| figure | Go reference | target | measured | met |",
  "|---|---|---|---|---|",
  ...targets.map(
    ([name, reference, target, measured, met]) =>
      `| ${name} | ${reference} | ${target} | ${measured} | ${met ? "yes" : "**no**"} |`,
  ),
  "",
  `Memory, read at rest (${SETTLE_MS / 1000} s after the last call): idle ${fixed(idle.rssMb, 1)} MB resident (${fixed(idle.anonMb, 1)} MB anonymous); after ${WARMUP_CYCLES.toLocaleString("en")} warm-up cycles ${fixed(warm.rssMb, 1)} MB (${fixed(warm.anonMb, 1)} MB anonymous); after ${CYCLES.toLocaleString("en")} more publish/unpublish cycles at c=16 ${fixed(afterCycles.rssMb, 1)} MB (${fixed(afterCycles.anonMb, 1)} MB anonymous), ${cycleErrors} errors; peak ${fixed(peak.peakMb, 1)} MB over the whole matrix.`,
  `Start-up, ${STARTS} starts: exec to a socket answering Probe median ${fixed(median(startTimes), 1)} ms (min ${fixed(Math.min(...startTimes), 1)}, max ${fixed(Math.max(...startTimes), 1)}); exec to the socket listening median ${fixed(median(listenTimes), 1)} ms.`,
  "",
  "| mounts on node | concurrency | operation | calls | errors | p50 ms | p99 ms | ops/s |",
  "|---:|---:|---|---:|---:|---:|---:|---:|",
  ...cells.map(
    (c) =>
      `| ${c.mounts.toLocaleString("en")} | ${c.concurrency} | ${c.operation} | ${c.count} | ${c.errors} | ${fixed(c.p50Ms)} | ${fixed(c.p99Ms)} | ${fixed(c.opsPerSec, 0)} |`,
  ),
];
const table = lines.join("\n");
console.log(table);

const results = {
  machine,
  quick,
  startTimes,
  memory: { idle, warm, afterCycles, peak, cycleErrors },
  cells,
};
writeFileSync(join(repo, "docs", "benchmarks.json"), `${JSON.stringify(results, null, 2)}\n`);
const docPath = join(repo, "docs", "benchmarks.md");
const doc = readFileSync(docPath, "utf8");
const begin = "<!-- bench:begin -->";
const end = "<!-- bench:end -->";
writeFileSync(
  docPath,
  `${doc.slice(0, doc.indexOf(begin) + begin.length)}\n${table}\n${doc.slice(doc.indexOf(end))}`,
);
agent.stop(true);
if (recursiveBind) run(["umount", join(socketDir, "spiffefs")]);
rmSync(root, { recursive: true, force: true });
process.exit(0);
