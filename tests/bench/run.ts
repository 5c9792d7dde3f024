// `npm run bench`: the driver's latency, throughput, start time and memory, measured the way the
// kubelet uses it, at several mount counts on the node, with and without --recursive-bind.
// Runs inside a private mount namespace and removes every mount it makes; prints markdown
// tables, writes docs/benchmarks.json and the generated part of docs/benchmarks.md.
//
// Knobs (environment):
//   BENCH_PARTS        what to run, of startup,memory,matrix,commands (default: all)
//   BENCH_MOUNTS       mount counts on the node (default 20,1000,10000,20000)
//   BENCH_MODES        plain,recursive (default both; recursive is --recursive-bind)
//   BENCH_CONCURRENCY  concurrency of the matrix cells (default 1,16)
//   BENCH_BASELINE     another build to measure beside this one, in the same run: the path of a
//                      compiled driver, or a git revision to build (e.g. main)
//   BENCH_QUICK=1      20 and 1,000 mounts, fewer calls
//   BENCH_SELINUX_LABEL=on  the driver labels the directory for SELinux (--selinux-label)

import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { cpus, loadavg, tmpdir, totalmem } from "node:os";
import { join, resolve } from "node:path";
import { openDirectory } from "../../src/linux/descriptors.ts";
import { MountTableReader, parseMountInfo } from "../../src/linux/mountinfo.ts";
import { AGENT_SOCKET, startAgent } from "../helpers/agent.ts";
import {
  assertPrivateMountNamespace,
  BINARY,
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
const list = (name: string, fallback: string) =>
  (process.env[name] ?? fallback).split(",").filter((item) => item !== "");
const parts = new Set(list("BENCH_PARTS", "startup,memory,matrix,commands"));
const MOUNT_LEVELS = list("BENCH_MOUNTS", quick ? "20,1000" : "20,1000,10000,20000").map(Number);
const MODES = list("BENCH_MODES", "plain,recursive") as Mode[];
const CONCURRENCY = list("BENCH_CONCURRENCY", "1,16").map(Number);
// BENCH_SELINUX_LABEL=on runs the driver with --selinux-label on: every publish then reads the
// labels of the directory and of each entry in it.
const selinuxLabel = process.env.BENCH_SELINUX_LABEL;
const VOLUMES = (concurrency: number) => (quick ? 100 : 160) * (concurrency > 1 ? 2 : 1);
// The burst that sets the memory figure: many calls at once, as after a node drain.
const BURST_CONCURRENCY = 32;
const BURST_VOLUMES = quick ? 160 : 320;
const CYCLES = quick ? 1_000 : 10_000;
const WARMUP_CYCLES = quick ? 500 : 1_000;
// Each phase stops starting calls after this long (cells then show fewer calls).
const PHASE_LIMIT_MS = 6_000;
const STARTS = 7;
// util-linux runs per command measured directly.
const COMMAND_RUNS = quick ? 15 : 30;
// Memory is read at rest: the driver collects garbage after a second without calls.
const SETTLE_MS = 2500;

type Mode = "plain" | "recursive";
const started = performance.now();
const loadBefore = loadavg()[0] ?? 0;

const root = tempDir("bench");
const socketDir = join(root, "agent-sockets");
mkdirSync(socketDir);
// The directory as a SPIRE agent lays it out: its socket and a link to it.
const agent = startAgent(socketDir);
symlinkSync(AGENT_SOCKET, join(socketDir, "api.sock"));
// Every background mount is made inside this one tmpfs, so one lazy unmount removes them all.
const background = join(root, "background");
mkdirSync(background);
run(["mount", "-t", "tmpfs", "bench-background", background]);
// With --recursive-bind, a read-only file system in the directory (SPIFFEFS's stand-in) on a
// shared mount: every publish then reads the mount table, binds recursively and makes the target
// a slave, the most a publish does. A plain bind leaves it out.
const spiffefs = join(socketDir, "spiffefs");
mkdirSync(spiffefs);
run(["mount", "-t", "tmpfs", "-o", "ro", "bench-spiffefs", spiffefs]);
run(["mount", "--make-shared", spiffefs]);

/** Removes every mount the benchmark made, then its files. */
function cleanUp(): void {
  agent.stop(true);
  const mounts = parseMountInfo(readFileSync("/proc/self/mountinfo", "utf8"));
  const ours = mounts.filter((mount) => mount.mountPoint.startsWith(`${root}/`));
  const ids = new Set(ours.map((mount) => mount.mountId));
  // A lazy unmount of a top one detaches everything below it in one go.
  for (const mount of ours.filter((each) => !ids.has(each.parentId)).reverse()) {
    Bun.spawnSync(["umount", "--lazy", mount.mountPoint]);
  }
  const left = parseMountInfo(readFileSync("/proc/self/mountinfo", "utf8")).filter((mount) =>
    mount.mountPoint.startsWith(`${root}/`),
  );
  if (left.length > 0) {
    throw new Error(`mounts left under ${root}: ${left.map((mount) => mount.mountPoint)}`);
  }
  rmSync(root, { recursive: true, force: true });
}
// A failed run cleans up too (the private namespace would drop the mounts anyway on exit).
for (const event of ["uncaughtException", "unhandledRejection"]) {
  process.on(event, (error) => {
    console.error(error);
    cleanUp();
    process.exit(1);
  });
}

function progress(line: string): void {
  process.stderr.write(`\r\x1b[K${line}`);
}

function run(argv: string[]): void {
  const result = Bun.spawnSync(argv, { stderr: "pipe" });
  if (result.exitCode !== 0) throw new Error(`${argv.join(" ")}: ${result.stderr.toString()}`);
}

function mountCount(): number {
  const text = readFileSync("/proc/self/mountinfo", "latin1");
  let lines = 0;
  for (let at = text.indexOf("\n"); at !== -1; at = text.indexOf("\n", at + 1)) lines++;
  return lines;
}

/**
 * Brings the namespace's mount table to at least `total` entries. Bind mounts are made in
 * blocks: one directory gets 99 binds, then each recursive bind of it adds 100 at once.
 */
function growMountTable(total: number): void {
  const block = join(background, "block");
  if (mountCount() < total && !existsSync(block)) {
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

/** The other build to measure, compiled from a revision if one was named. */
function baselineBinary(): string | undefined {
  const wanted = process.env.BENCH_BASELINE;
  if (!wanted) return undefined;
  if (existsSync(wanted)) return resolve(wanted);
  const source = mkdtempSync(join(tmpdir(), "spiffe-csi-bench-baseline-"));
  progress(`building the baseline from ${wanted}`);
  const archive = Bun.spawnSync(["git", "-C", repo, "archive", wanted], { stderr: "pipe" });
  if (archive.exitCode !== 0) throw new Error(`git archive ${wanted}: ${archive.stderr}`);
  const unpack = Bun.spawnSync(["tar", "-x", "-C", source], { stdin: archive.stdout });
  if (unpack.exitCode !== 0) throw new Error(`unpacking ${wanted}: ${unpack.stderr}`);
  symlinkSync(join(repo, "node_modules"), join(source, "node_modules"));
  const outfile = join(source, "spiffe-csi-driver");
  const build = Bun.spawnSync([process.execPath, "scripts/build.ts"], {
    cwd: source,
    env: { ...process.env, BUILD_OUTFILE: outfile },
    stderr: "pipe",
  });
  if (build.exitCode !== 0) throw new Error(`building ${wanted}: ${build.stderr}`);
  return outfile;
}

interface Driver {
  name: string;
  mode: Mode;
  process: DriverProcess;
  csiSocketPath: string;
}

/** Starts a driver; times exec to a listening socket and exec to the first answered Probe. */
async function startDriver(
  name: string,
  mode: Mode,
  binary = BINARY,
): Promise<Driver & { listenMs: number; startMs: number }> {
  const csiSocketPath = join(root, "plugin", name, mode, "csi.sock");
  const t0 = performance.now();
  const driver = spawnDriver(
    [
      "-workload-api-socket-dir",
      socketDir,
      "-csi-socket-path",
      csiSocketPath,
      ...(selinuxLabel ? ["--selinux-label", selinuxLabel] : []),
      ...(mode === "recursive" ? ["--recursive-bind"] : []),
    ],
    { MY_NODE_NAME: "bench-node" },
    [],
    binary,
  );
  while (!existsSync(csiSocketPath)) await Bun.sleep(0.5);
  const listenMs = performance.now() - t0;
  await waitServing(driver, csiSocketPath);
  return {
    name,
    mode,
    process: driver,
    csiSocketPath,
    listenMs,
    startMs: performance.now() - t0,
  };
}

async function load(
  driver: Driver,
  job: Omit<Job, "csiSocketPath" | "kubeletRoot" | "phaseLimitMs">,
): Promise<Record<string, PhaseResult>> {
  const kubeletRoot = join(root, "kubelet", `${job.kind}-${Date.now()}`);
  const full: Job = {
    ...job,
    csiSocketPath: driver.csiSocketPath,
    kubeletRoot,
    phaseLimitMs: PHASE_LIMIT_MS,
  };
  const child = Bun.spawn(
    [process.execPath, join(import.meta.dir, "load.ts"), JSON.stringify(full)],
    { stdout: "pipe", stderr: "inherit", env: process.env },
  );
  const output = await new Response(child.stdout).text();
  if ((await child.exited) !== 0) throw new Error(`load generator failed: ${output}`);
  rmSync(kubeletRoot, { recursive: true, force: true });
  const results: Record<string, PhaseResult> = JSON.parse(output);
  for (const [operation, result] of Object.entries(results)) {
    if (result.errors > 0) {
      process.stderr.write(
        `\n${driver.name} ${driver.mode} ${operation}: ${result.errors} errors, first: ${result.firstError}\n`,
      );
    }
  }
  return results;
}

/** The driver's peak resident memory since the last reset, then reset (clear_refs 5). */
function peakSinceReset(pid: number): number {
  const { peakMb } = residentMemory(pid);
  writeFileSync(`/proc/${pid}/clear_refs`, "5");
  return peakMb;
}

/** Two rounds of one phase as one. */
function merged(a: PhaseResult | undefined, b: PhaseResult): PhaseResult {
  if (!a) return b;
  return {
    count: a.count + b.count,
    errors: a.errors + b.errors,
    firstError: a.firstError ?? b.firstError,
    latenciesMs: [...a.latenciesMs, ...b.latenciesMs],
    elapsedMs: a.elapsedMs + b.elapsedMs,
  };
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
  build: string;
  mode: Mode;
  mounts: number;
  concurrency: number;
  operation: string;
  count: number;
  errors: number;
  p50Ms: number;
  p99Ms: number;
  opsPerSec: number;
  /** The driver's peak resident memory over the cell (all of its operations). */
  peakMb: number;
}

function cell(
  driver: Driver,
  mounts: number,
  concurrency: number,
  operation: string,
  result: PhaseResult,
  peakMb: number,
): Cell {
  const sorted = [...result.latenciesMs].sort((a, b) => a - b);
  return {
    build: driver.name,
    mode: driver.mode,
    mounts,
    concurrency,
    operation,
    count: result.count,
    errors: result.errors,
    p50Ms: percentile(sorted, 50),
    p99Ms: percentile(sorted, 99),
    opsPerSec: (result.count / result.elapsedMs) * 1000,
    peakMb,
  };
}

const fixed = (n: number, digits = 2) => (Number.isFinite(n) ? n.toFixed(digits) : "-");
const count = (n: number) => n.toLocaleString("en");

// 1. Start-up time: exec to a socket that answers Probe.
const startTimes: number[] = [];
const listenTimes: number[] = [];
if (parts.has("startup")) {
  for (let i = 0; i < STARTS; i++) {
    progress(`start-up ${i + 1}/${STARTS}`);
    const driver = await startDriver(`start-${i}`, "plain");
    startTimes.push(driver.startMs);
    listenTimes.push(driver.listenMs);
    await driver.process.stop();
  }
}

// 2. Memory: idle, after a warm-up, after CYCLES publish/unpublish cycles, peak.
let memory:
  | {
      idle: ReturnType<typeof residentMemory>;
      warm: ReturnType<typeof residentMemory>;
      afterCycles: ReturnType<typeof residentMemory>;
      cycleErrors: number;
    }
  | undefined;
if (parts.has("memory")) {
  progress("memory: idle");
  const driver = await startDriver("memory", "plain");
  const pid = driver.process.proc.pid;
  await Bun.sleep(SETTLE_MS);
  const idle = residentMemory(pid);
  progress(`memory: ${WARMUP_CYCLES} warm-up cycles`);
  const warmup = await load(driver, { kind: "cycles", volumes: WARMUP_CYCLES, concurrency: 16 });
  await Bun.sleep(SETTLE_MS);
  const warm = residentMemory(pid);
  progress(`memory: ${CYCLES} publish/unpublish cycles`);
  const cycles = await load(driver, { kind: "cycles", volumes: CYCLES, concurrency: 16 });
  await Bun.sleep(SETTLE_MS);
  const afterCycles = residentMemory(pid);
  const cycleErrors = (warmup.cycle?.errors ?? 0) + (cycles.cycle?.errors ?? 0);
  await driver.process.stop();
  memory = { idle, warm, afterCycles, cycleErrors };
}

// 3. util-linux itself at each mount count: the ways to unmount a bind of the directory, and
// the mount table as --recursive-bind reads it. Spawned from here the way the driver spawns them.
interface CommandCell {
  mounts: number;
  name: string;
  p50Ms: number;
}
const commandCells: CommandCell[] = [];
const floor = join(root, "commands");
mkdirSync(floor);

async function spawnTimed(argv: string[], fds: number[]): Promise<number> {
  const t0 = performance.now();
  const child = Bun.spawn(argv, { stdio: ["ignore", "ignore", "pipe", ...fds], detached: true });
  const code = await child.exited;
  if (code !== 0) throw new Error(`${argv.join(" ")}: ${await new Response(child.stderr).text()}`);
  return performance.now() - t0;
}

const UNMOUNT_WAYS: [
  string,
  (covered: number, root: number, path: string) => [string[], number[]],
][] = [
  [
    "`umount --no-canonicalize --lazy` through the mount's root (before)",
    (_, root) => [["umount", "--no-canonicalize", "--lazy", "/proc/self/fd/3"], [root]],
  ],
  [
    "`umount --lazy` through the mount's root",
    (_, root) => [["umount", "--lazy", "/proc/self/fd/3"], [root]],
  ],
  [
    "`umount --no-canonicalize` through the covered directory",
    (covered) => [["umount", "--no-canonicalize", "/proc/self/fd/3"], [covered]],
  ],
  [
    "`umount --internal-only --no-mtab` through the covered directory (now)",
    (covered) => [["umount", "--internal-only", "--no-mtab", "/proc/self/fd/3"], [covered]],
  ],
  [
    "`umount PATH` (resolves the path again: not race-free)",
    (_, __, path) => [["umount", path], []],
  ],
];

async function measureCommands(mounts: number): Promise<void> {
  const target = join(floor, "target");
  mkdirSync(target, { recursive: true });
  using source = openDirectory(socketDir);
  const samples = new Map<string, number[]>();
  const add = (name: string, ms: number) => samples.set(name, [...(samples.get(name) ?? []), ms]);
  for (let i = 0; i < COMMAND_RUNS; i++) {
    for (const [name, way] of UNMOUNT_WAYS) {
      using covered = openDirectory(target);
      add(
        "`mount --no-canonicalize --bind` through descriptors",
        await spawnTimed(
          ["mount", "--no-canonicalize", "--bind", "/proc/self/fd/3", "/proc/self/fd/4"],
          [source.fd, covered.fd],
        ),
      );
      const mountRoot = openDirectory(target);
      const [argv, fds] = way(covered.fd, mountRoot.fd, target);
      if (fds.includes(mountRoot.fd)) {
        add(name, await spawnTimed(argv, fds));
        mountRoot.close();
      } else {
        mountRoot.close();
        add(name, await spawnTimed(argv, fds));
      }
    }
  }
  const reader = new MountTableReader();
  for (let i = 0; i < COMMAND_RUNS; i++) {
    let t0 = performance.now();
    await reader.read({ mountIds: [source.mountId], directories: [socketDir] });
    add("--recursive-bind's read of the mount table (one tree kept)", performance.now() - t0);
    t0 = performance.now();
    parseMountInfo(readFileSync("/proc/self/mountinfo", "utf8"));
    add("the whole table read and parsed (before)", performance.now() - t0);
  }
  for (const [name, values] of samples) commandCells.push({ mounts, name, p50Ms: median(values) });
}

// 4. The matrix: mounts on the node x mode x build x concurrency x operation, and a burst.
const cells: Cell[] = [];
const drivers: Driver[] = [];
if (parts.has("matrix")) {
  const baseline = baselineBinary();
  for (const mode of MODES) {
    if (baseline) drivers.push(await startDriver("baseline", mode, baseline));
    drivers.push(await startDriver("this build", mode));
  }
  // Steady state is what is measured: the first calls of a fresh process run cold code.
  for (const driver of drivers) {
    progress(`warm-up: ${driver.name}, ${driver.mode}`);
    await load(driver, { kind: "cycles", volumes: WARMUP_CYCLES / 2, concurrency: 16 });
  }
}
for (const mounts of MOUNT_LEVELS) {
  if (!parts.has("matrix") && !parts.has("commands")) break;
  growMountTable(mounts);
  const actual = mountCount();
  if (parts.has("commands")) {
    progress(`mounts ${count(actual)}: util-linux commands`);
    await measureCommands(mounts);
  }
  for (const mode of MODES) {
    const builds = drivers.filter((driver) => driver.mode === mode);
    // With a baseline, the two builds take turns, A B B A, each with half the calls: a load
    // that drifts during the cell weighs on both alike.
    const turns = builds.length === 2 ? [0, 1, 1, 0] : builds.map((_, index) => index);
    for (const concurrency of CONCURRENCY) {
      const results = builds.map(() => new Map<string, PhaseResult>());
      for (const driver of builds) peakSinceReset(driver.process.proc.pid);
      for (const turn of turns) {
        const driver = builds[turn] as Driver;
        progress(`mounts ${count(actual)}: ${driver.name}, ${mode}, c=${concurrency}`);
        const volumes = (VOLUMES(concurrency) * builds.length) / turns.length;
        const round = await load(driver, { kind: "ops", volumes, concurrency });
        for (const [operation, result] of Object.entries(round)) {
          results[turn]?.set(operation, merged(results[turn]?.get(operation), result));
        }
      }
      builds.forEach((driver, index) => {
        const peakMb = peakSinceReset(driver.process.proc.pid);
        for (const [operation, result] of results[index] ?? []) {
          cells.push(cell(driver, mounts, concurrency, operation, result, peakMb));
        }
      });
    }
    for (const driver of builds) {
      const pid = driver.process.proc.pid;
      progress(`mounts ${count(actual)}: ${driver.name}, ${mode}, burst`);
      const burst = await load(driver, {
        kind: "cycles",
        volumes: BURST_VOLUMES,
        concurrency: BURST_CONCURRENCY,
      });
      if (burst.cycle) {
        cells.push(
          cell(driver, mounts, BURST_CONCURRENCY, "cycle", burst.cycle, peakSinceReset(pid)),
        );
      }
    }
  }
}
for (const driver of drivers) await driver.process.stop();
progress("");

// 5. Report.
const find = (build: string, mode: Mode, mounts: number, concurrency: number, operation: string) =>
  cells.find(
    (c) =>
      c.build === build &&
      c.mode === mode &&
      c.mounts === mounts &&
      c.concurrency === concurrency &&
      c.operation === operation,
  );
const p50 = (
  mode: Mode,
  mounts: number,
  concurrency: number,
  operation: string,
  build = "this build",
) => find(build, mode, mounts, concurrency, operation)?.p50Ms ?? Number.NaN;
const topMounts = MOUNT_LEVELS[MOUNT_LEVELS.length - 1] ?? 20;
const hasBaseline = cells.some((c) => c.build === "baseline");
const OPERATIONS = ["publish", "republish", "stats", "unpublish"];

type Target = [name: string, target: string, measured: string, met: boolean];
const targets: Target[] = [];
const ratioTarget = (operation: string) => {
  const ratio = p50("plain", topMounts, 1, operation) / p50("plain", 20, 1, operation);
  targets.push([
    `${operation} p50, ${count(topMounts)} vs 20 mounts, c=1`,
    "≤ 1.3x",
    `${fixed(ratio)}x`,
    ratio <= 1.3,
  ]);
};
if (cells.length > 0) {
  ratioTarget("unpublish");
  ratioTarget("publish");
  if (hasBaseline) {
    // Noise on a shared machine moves a median by several percent between two builds.
    let worst = { ratio: 0, what: "" };
    for (const mode of MODES) {
      for (const concurrency of CONCURRENCY) {
        for (const operation of OPERATIONS) {
          const ratio =
            p50(mode, 20, concurrency, operation) /
            p50(mode, 20, concurrency, operation, "baseline");
          if (ratio > worst.ratio) worst = { ratio, what: `${mode} ${operation} c=${concurrency}` };
        }
      }
    }
    targets.push([
      "every p50 at 20 mounts vs the baseline's (worst)",
      "≤ 1.1x",
      `${fixed(worst.ratio)}x (${worst.what})`,
      worst.ratio <= 1.1,
    ]);
  }
  const burst = find("this build", "recursive", topMounts, BURST_CONCURRENCY, "cycle");
  if (burst) {
    targets.push([
      `--recursive-bind peak memory, ${count(topMounts)} mounts, c=${BURST_CONCURRENCY}`,
      "< 128 MiB",
      `${fixed(burst.peakMb, 1)} MiB`,
      burst.peakMb < 128,
    ]);
  }
}
if (cells.some((c) => c.mode === "plain" && c.mounts === 1000)) {
  const publish1000 = p50("plain", 1000, 1, "publish");
  const unpublish1000 = p50("plain", 1000, 1, "unpublish");
  const throughput = find("this build", "plain", 1000, 16, "publish")?.opsPerSec ?? Number.NaN;
  targets.push(
    ["publish p50, 1,000 mounts, c=1", "≤ 3.5 ms", `${fixed(publish1000)} ms`, publish1000 <= 3.5],
    [
      "unpublish p50, 1,000 mounts, c=1",
      "≤ 3.4 ms",
      `${fixed(unpublish1000)} ms`,
      unpublish1000 <= 3.4,
    ],
    [
      "publish throughput, 1,000 mounts, c=16",
      "≥ 400 ops/s",
      `${fixed(throughput, 0)} ops/s`,
      throughput >= 400,
    ],
  );
}
if (memory) {
  const growth = memory.afterCycles.rssMb - memory.warm.rssMb;
  const fromIdle = memory.afterCycles.rssMb - memory.idle.rssMb;
  targets.push(
    [
      "idle resident memory",
      "≤ 45 MB",
      `${fixed(memory.idle.rssMb, 1)} MB`,
      memory.idle.rssMb <= 45,
    ],
    [
      `memory growth over ${count(CYCLES)} cycles, after a warm-up`,
      "≤ 5 MB",
      `${fixed(growth, 1)} MB`,
      growth <= 5,
    ],
    [
      `memory growth from the idle start to after ${count(WARMUP_CYCLES + CYCLES)} cycles`,
      "≤ 5 MB",
      `${fixed(fromIdle, 1)} MB`,
      fromIdle <= 5,
    ],
  );
}
if (startTimes.length > 0) {
  targets.push([
    "exec to serving (median)",
    "≤ 50 ms",
    `${fixed(median(startTimes), 1)} ms`,
    median(startTimes) <= 50,
  ]);
}

const machine = `${cpus().length} cores (${cpus()[0]?.model.trim() ?? "unknown CPU"}), ${(totalmem() / 2 ** 30).toFixed(0)} GiB, Linux ${readFileSync("/proc/sys/kernel/osrelease", "utf8").trim()}, Bun ${Bun.version}, util-linux ${
  Bun.spawnSync(["umount", "--version"])
    .stdout.toString()
    .match(/util-linux ([\d.]+)/)?.[1] ?? "?"
}`;
const elapsedMin = (performance.now() - started) / 60_000;
const lines = [
  `Machine: ${machine}. ${new Date().toISOString().slice(0, 10)}. Load average ${fixed(loadBefore, 1)} at the start, ${fixed(loadavg()[0] ?? 0, 1)} at the end; the run took ${fixed(elapsedMin, 1)} min.${quick ? " Quick run (BENCH_QUICK=1)." : ""}${selinuxLabel ? ` --selinux-label ${selinuxLabel} (BENCH_SELINUX_LABEL).` : ""}${hasBaseline ? ` Baseline: ${process.env.BENCH_BASELINE} (BENCH_BASELINE), measured beside this build at each mount count.` : ""}`,
  "",
];
if (targets.length > 0) {
  lines.push(
    "| figure | target | measured | met |",
    "|---|---|---|---|",
    ...targets.map(
      ([name, target, measured, met]) =>
        `| ${name} | ${target} | ${measured} | ${met ? "yes" : "**no**"} |`,
    ),
    "",
  );
}
if (memory) {
  lines.push(
    `Memory, read at rest (${SETTLE_MS / 1000} s after the last call): idle ${fixed(memory.idle.rssMb, 1)} MB resident (${fixed(memory.idle.anonMb, 1)} MB anonymous); after ${count(WARMUP_CYCLES)} warm-up cycles ${fixed(memory.warm.rssMb, 1)} MB (${fixed(memory.warm.anonMb, 1)} MB anonymous); after ${count(CYCLES)} more publish/unpublish cycles at c=16 ${fixed(memory.afterCycles.rssMb, 1)} MB (${fixed(memory.afterCycles.anonMb, 1)} MB anonymous), ${memory.cycleErrors} errors.`,
  );
}
if (startTimes.length > 0) {
  lines.push(
    `Start-up, ${STARTS} starts: exec to a socket answering Probe median ${fixed(median(startTimes), 1)} ms (min ${fixed(Math.min(...startTimes), 1)}, max ${fixed(Math.max(...startTimes), 1)}); exec to the socket listening median ${fixed(median(listenTimes), 1)} ms.`,
  );
}
for (const mode of MODES) {
  const rows = cells.filter(
    (c) => c.mode === mode && c.build === "this build" && c.operation !== "cycle",
  );
  if (rows.length === 0) continue;
  lines.push(
    "",
    `**${mode === "plain" ? "Plain bind" : "`--recursive-bind`"}**: p50 and p99 per call, ops/s over the phase, the driver's peak resident memory over the cell${hasBaseline ? "; the baseline's p50 and peak beside" : ""}.`,
    "",
    `| mounts | c | operation | calls | errors | p50 ms | p99 ms | ops/s | peak MiB |${hasBaseline ? " baseline p50 ms | ratio | baseline peak MiB |" : ""}`,
    `|---:|---:|---|---:|---:|---:|---:|---:|---:|${hasBaseline ? "---:|---:|---:|" : ""}`,
    ...rows.map((c) => {
      const base = find("baseline", mode, c.mounts, c.concurrency, c.operation);
      const baseline = hasBaseline
        ? ` ${fixed(base?.p50Ms ?? Number.NaN)} | ${fixed(c.p50Ms / (base?.p50Ms ?? Number.NaN))}x | ${fixed(base?.peakMb ?? Number.NaN, 0)} |`
        : "";
      return `| ${count(c.mounts)} | ${c.concurrency} | ${c.operation} | ${c.count} | ${c.errors} | ${fixed(c.p50Ms)} | ${fixed(c.p99Ms)} | ${fixed(c.opsPerSec, 0)} | ${fixed(c.peakMb, 0)} |${baseline}`;
    }),
  );
}
const bursts = cells.filter((c) => c.operation === "cycle");
if (bursts.length > 0) {
  const builds = [...new Set(bursts.map((c) => c.build))];
  const columns = MODES.flatMap((mode) => builds.map((build) => ({ mode, build })));
  lines.push(
    "",
    `**Bursts**: ${BURST_VOLUMES} publish-then-unpublish cycles at c=${BURST_CONCURRENCY}; the driver's peak resident memory (MiB) and the cycle's p50 (ms).`,
    "",
    `| mounts | ${columns.map(({ mode, build }) => `${mode}, ${build}`).join(" | ")} |`,
    `|---:|${columns.map(() => "---:|").join("")}`,
    ...MOUNT_LEVELS.map((mounts) => {
      const values = columns.map(({ mode, build }) => {
        const burst = find(build, mode, mounts, BURST_CONCURRENCY, "cycle");
        return burst
          ? `${fixed(burst.peakMb, 0)} MiB, ${fixed(burst.p50Ms, 1)} ms${burst.errors > 0 ? `, ${burst.errors} errors` : ""}`
          : "-";
      });
      return `| ${count(mounts)} | ${values.join(" | ")} |`;
    }),
  );
}
if (commandCells.length > 0) {
  const names = [...new Set(commandCells.map((c) => c.name))];
  const levels = [...new Set(commandCells.map((c) => c.mounts))];
  lines.push(
    "",
    `**util-linux and the mount table alone**, p50 of ${COMMAND_RUNS} runs (ms), spawned from a Bun process the way the driver spawns them.`,
    "",
    `| | ${levels.map((mounts) => `${count(mounts)} mounts`).join(" | ")} |`,
    `|---|${levels.map(() => "---:|").join("")}`,
    ...names.map(
      (name) =>
        `| ${name} | ${levels
          .map((mounts) =>
            fixed(
              commandCells.find((c) => c.name === name && c.mounts === mounts)?.p50Ms ?? Number.NaN,
            ),
          )
          .join(" | ")} |`,
    ),
  );
}
const table = lines.join("\n");
console.log(table);

writeFileSync(
  join(repo, "docs", "benchmarks.json"),
  `${JSON.stringify({ machine, quick, startTimes, memory, cells, commands: commandCells }, null, 2)}\n`,
);
const docPath = join(repo, "docs", "benchmarks.md");
const doc = readFileSync(docPath, "utf8");
const begin = "<!-- bench:begin -->";
const end = "<!-- bench:end -->";
writeFileSync(
  docPath,
  `${doc.slice(0, doc.indexOf(begin) + begin.length)}\n${table}\n${doc.slice(doc.indexOf(end))}`,
);

cleanUp();
process.exit(0);
