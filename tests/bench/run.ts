// `npm run bench`: what the kubelet sees of the driver, said as ratios to the floor the design
// sets (a `mount --bind` and an `umount` spawned by a small parent, measured in the same run), at
// 20 to 20,000 mounts on the node; the memory of the driver's whole process tree; its start-up.
// Runs inside a private mount namespace and removes every mount it makes; prints markdown tables,
// writes docs/benchmarks.json and the generated part of docs/benchmarks.md.
//
//   npm run bench -- --client ../shared/tools/csibench/csibench   a kubelet-like grpc-go client
//   npm run bench                                                 the built-in grpc-js client
//
// Knobs (environment):
//   BENCH_PARTS        what to run, of startup,memory,matrix,commands (default: all)
//   BENCH_MOUNTS       mount counts on the node (default 20,1000,20000)
//   BENCH_MODES        plain,recursive (default both; recursive is --recursive-bind)
//   BENCH_CONCURRENCY  concurrency of the matrix cells (default 1,16)
//   BENCH_BASELINE     another build to measure beside this one, in the same run: the path of a
//                      compiled driver, or a git revision to build (e.g. main)
//   BENCH_QUICK=1      20 and 1,000 mounts, fewer calls (not for docs/benchmarks.md)
//   BENCH_SELINUX_LABEL=on  the driver labels the directory for SELinux (--selinux-label)
//
// Beside the floor, the matrix measures the gRPC stack alone: the same client against the
// driver's own server with handlers that answer at once (empty-server.ts).

import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { cpus, loadavg, tmpdir, totalmem } from "node:os";
import { join, resolve } from "node:path";
import { parseArgs } from "node:util";
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
import {
  builtInClient,
  type Client,
  OPERATIONS,
  type Operation,
  type PhaseStats,
  percentile,
  programClient,
} from "./clients.ts";

assertPrivateMountNamespace();

const { values: flags } = parseArgs({ options: { client: { type: "string" } } });
const repo = resolve(import.meta.dir, "../..");
const quick = process.env.BENCH_QUICK === "1";
const list = (name: string, fallback: string) =>
  (process.env[name] ?? fallback).split(",").filter((item) => item !== "");
const parts = new Set(list("BENCH_PARTS", "startup,memory,matrix,commands"));
const MOUNT_LEVELS = list("BENCH_MOUNTS", quick ? "20,1000" : "20,1000,20000").map(Number);
const MODES = list("BENCH_MODES", "plain,recursive") as Mode[];
const CONCURRENCY = list("BENCH_CONCURRENCY", "1,16").map(Number);
// BENCH_SELINUX_LABEL=on runs the driver with --selinux-label on: every publish then reads the
// labels of the directory and of each entry in it.
const selinuxLabel = process.env.BENCH_SELINUX_LABEL;
const VOLUMES = (concurrency: number) => (quick ? 100 : 200) * (concurrency > 1 ? 2 : 1);
// The burst that sets the --recursive-bind memory figure: many calls at once, as after a drain.
const BURST_CONCURRENCY = 32;
const BURST_VOLUMES = quick ? 160 : 320;
// Publish/unpublish cycles of the memory figure, in rounds of this many volumes at c=16.
const CYCLES = quick ? 1_000 : 10_000;
const CYCLE_ROUND = 500;
const WARMUP_VOLUMES = quick ? 200 : 500;
// The built-in client stops starting calls in a phase after this long.
const PHASE_LIMIT_MS = 6_000;
const STARTS = 7;
// Floor runs at each mount count, half before and half after its cells.
const FLOOR_RUNS = quick ? 60 : 200;
// util-linux runs per command measured directly.
const COMMAND_RUNS = quick ? 15 : 30;
// At rest: the driver collects garbage after a second without calls, and gives the memory of
// the burst back after 30 s (src/ops/memory.ts); a margin on top.
const REST_MS = 33_000;
const SETTLE_MS = 3_000;
// How long a child of the driver (the inspector) may take to leave once the driver is idle: its
// idle time (30 s) and a margin.
const CHILD_EXIT_WAIT_MS = 45_000;
// How often the process tree's memory is read during the cycles.
const SAMPLE_MS = 100;

const client: Client = flags.client
  ? programClient(resolve(flags.client))
  : builtInClient(PHASE_LIMIT_MS);

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
// The kubelet's directories, on a tmpfs as on most nodes.
const kubeletDir = join(root, "kubelet");
mkdirSync(kubeletDir);
run(["mount", "-t", "tmpfs", "bench-kubelet", kubeletDir]);

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
  extraArgs: string[] = [],
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
      ...extraArgs,
    ],
    { MY_NODE_NAME: "bench-node" },
    [],
    binary,
  );
  while (!existsSync(csiSocketPath)) {
    if (driver.proc.exitCode !== null) throw new Error(`driver exited: ${driver.stderr}`);
    await Bun.sleep(0.2);
  }
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

let kubeletRuns = 0;
/** One round of the client against a driver, in a kubelet root of its own. */
async function load(
  driver: Driver,
  volumes: number,
  concurrency: number,
): Promise<Record<Operation, PhaseStats>> {
  const kubeletRoot = join(kubeletDir, `run-${kubeletRuns++}`);
  const results = await client.ops(driver.csiSocketPath, kubeletRoot, volumes, concurrency);
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

/** The process and every process below it. */
function processTree(pid: number): number[] {
  const pids = [pid];
  let tasks: string[] = [];
  try {
    tasks = readdirSync(`/proc/${pid}/task`);
  } catch {
    return [];
  }
  for (const task of tasks) {
    try {
      const children = readFileSync(`/proc/${pid}/task/${task}/children`, "utf8");
      for (const child of children.split(" ").filter((each) => each.trim() !== "")) {
        pids.push(...processTree(Number(child)));
      }
    } catch {
      // The thread ended meanwhile.
    }
  }
  return pids;
}

interface TreeMemory {
  /** Proportional set size summed over the tree, MB. */
  pssMb: number;
  processes: { pid: number; pssMb: number; rssMb: number; anonMb: number }[];
}

function commandLine(pid: number): string {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, "latin1");
  } catch {
    return "";
  }
}

/**
 * The memory of a process tree: PSS summed (a page shared by n processes counts 1/n in each).
 * A child caught between vfork and exec shares the driver's memory, and would count it twice:
 * it shows the driver's command line, and is left out.
 */
function treeMemory(pid: number): TreeMemory {
  const processes: TreeMemory["processes"] = [];
  const driverCommand = commandLine(pid);
  for (const each of processTree(pid)) {
    if (each !== pid && commandLine(each) === driverCommand) continue;
    try {
      const rollup = readFileSync(`/proc/${each}/smaps_rollup`, "utf8");
      const mb = (key: string) =>
        Number(new RegExp(`^${key}:\\s+(\\d+) kB`, "m").exec(rollup)?.[1] ?? Number.NaN) / 1024;
      processes.push({ pid: each, pssMb: mb("Pss"), rssMb: mb("Rss"), anonMb: mb("Pss_Anon") });
    } catch {
      // Gone meanwhile.
    }
  }
  return { pssMb: processes.reduce((sum, each) => sum + each.pssMb, 0), processes };
}

function median(values: number[]): number {
  return percentile(
    [...values].sort((a, b) => a - b),
    50,
  );
}

const fixed = (n: number, digits = 2) => (Number.isFinite(n) ? n.toFixed(digits) : "-");
const count = (n: number) => n.toLocaleString("en");

// The floor: `mount --bind` and `umount` started by a small parent (floor.py, posix_spawn), and
// for reference by this Bun process with Bun.spawn, as the driver starts them.
interface FloorSamples {
  mount: number[];
  umount: number[];
  bunMount: number[];
  bunUmount: number[];
}
const floors = new Map<number, FloorSamples>();
const floorSource = join(root, "floor-source");
const floorTarget = join(root, "floor-target");
mkdirSync(floorSource);
mkdirSync(floorTarget);
const python = Bun.which("python3");

async function measureFloor(mounts: number, runs: number): Promise<void> {
  const samples = floors.get(mounts) ?? { mount: [], umount: [], bunMount: [], bunUmount: [] };
  floors.set(mounts, samples);
  const env = { PATH: process.env.PATH ?? "/usr/sbin:/usr/bin:/sbin:/bin", LC_ALL: "C" };
  if (python) {
    const child = Bun.spawn(
      [python, join(import.meta.dir, "floor.py"), floorSource, floorTarget, String(runs)],
      { stdout: "pipe", stderr: "inherit", env },
    );
    const output = await new Response(child.stdout).text();
    if ((await child.exited) !== 0) throw new Error(`floor.py failed: ${output}`);
    const times: { mount: number[]; umount: number[] } = JSON.parse(output);
    samples.mount.push(...times.mount);
    samples.umount.push(...times.umount);
  }
  const timed = async (argv: string[]) => {
    const t0 = performance.now();
    const child = Bun.spawn(argv, { stdio: ["ignore", "ignore", "inherit"], env });
    if ((await child.exited) !== 0) throw new Error(`${argv.join(" ")} failed`);
    return performance.now() - t0;
  };
  for (let i = 0; i < runs; i++) {
    samples.bunMount.push(await timed(["mount", "--bind", floorSource, floorTarget]));
    samples.bunUmount.push(await timed(["umount", floorTarget]));
  }
}

/** The gRPC stack alone, p50 per operation at c=1, by mount count (see empty-server.ts). */
const stack = new Map<number, Record<Operation, PhaseStats>>();
let emptyServer: { proc: ReturnType<typeof Bun.spawn>; csiSocketPath: string } | undefined;

async function startEmptyServer(): Promise<NonNullable<typeof emptyServer>> {
  const csiSocketPath = join(root, "plugin", "empty", "csi.sock");
  mkdirSync(join(root, "plugin", "empty"), { recursive: true });
  const proc = Bun.spawn(
    [process.execPath, join(import.meta.dir, "empty-server.ts"), csiSocketPath],
    {
      stdin: "ignore",
      stdout: "pipe",
      stderr: "inherit",
      env: { PATH: process.env.PATH ?? "/usr/bin:/bin" },
    },
  );
  const reader = (proc.stdout as ReadableStream<Uint8Array>).getReader();
  let said = "";
  while (!said.includes("listening")) {
    const chunk = await reader.read();
    if (chunk.done) throw new Error(`empty-server.ts exited before listening: ${said}`);
    said += new TextDecoder().decode(chunk.value);
  }
  reader.releaseLock();
  return { proc, csiSocketPath };
}

async function measureStack(mounts: number): Promise<void> {
  if (!emptyServer) {
    emptyServer = await startEmptyServer();
    // Warmed up as the drivers are: steady state is what is measured.
    await client.ops(
      emptyServer.csiSocketPath,
      join(kubeletDir, `run-${kubeletRuns++}`),
      WARMUP_VOLUMES,
      16,
    );
  }
  const kubeletRoot = join(kubeletDir, `run-${kubeletRuns++}`);
  stack.set(mounts, await client.ops(emptyServer.csiSocketPath, kubeletRoot, VOLUMES(1), 1));
}

/** The floor's p50 and p99 for `operation` at `mounts`: mount for a publish, umount else. */
function floorOf(mounts: number, operation: Operation | "umount" | "mount") {
  const samples = floors.get(mounts);
  const unmounting = operation === "unpublish" || operation === "umount";
  // Without python3, Bun.spawn from here is the floor.
  const values = samples
    ? unmounting
      ? samples.umount.length > 0
        ? samples.umount
        : samples.bunUmount
      : samples.mount.length > 0
        ? samples.mount
        : samples.bunMount
    : [];
  const sorted = [...values].sort((a, b) => a - b);
  return { p50Ms: percentile(sorted, 50), p99Ms: percentile(sorted, 99) };
}

// 1. Start-up: exec to a listening socket, and to a socket that answers Probe.
// With --health-addr too, as the DaemonSet starts it: the metrics and the health server load
// before the CSI socket listens.
const startTimes: number[] = [];
const listenTimes: number[] = [];
const healthListenTimes: number[] = [];
if (parts.has("startup")) {
  for (let i = 0; i < STARTS; i++) {
    progress(`start-up ${i + 1}/${STARTS}`);
    const driver = await startDriver(`start-${i}`, "plain");
    startTimes.push(driver.startMs);
    listenTimes.push(driver.listenMs);
    await driver.process.stop();
    const withHealth = await startDriver(`start-health-${i}`, "plain", BINARY, [
      "--health-addr",
      "127.0.0.1:0",
    ]);
    healthListenTimes.push(withHealth.listenMs);
    await withHealth.process.stop();
  }
}

// 2. Memory of the whole process tree: 1 s after start, at its peak over CYCLES publish/unpublish
// cycles at c=16, and at rest after them.
let memory:
  | {
      afterStart: TreeMemory;
      peak: TreeMemory;
      atRest: TreeMemory;
      restWaitMs: number;
      cycles: number;
      cycleErrors: number;
      cyclesPerSec: number;
    }
  | undefined;
if (parts.has("memory")) {
  progress("memory: 1 s after start");
  const driver = await startDriver("memory", "plain");
  const pid = driver.process.proc.pid;
  await Bun.sleep(1_000);
  const afterStart = treeMemory(pid);
  let peak = afterStart;
  const sampler = setInterval(() => {
    const now = treeMemory(pid);
    if (now.pssMb > peak.pssMb) peak = now;
  }, SAMPLE_MS);
  let cycles = 0;
  let cycleErrors = 0;
  const t0 = performance.now();
  while (cycles < CYCLES) {
    progress(`memory: ${count(cycles)}/${count(CYCLES)} publish/unpublish cycles`);
    const round = await load(driver, CYCLE_ROUND, 16);
    cycles += round.unpublish.count;
    cycleErrors += round.publish.errors + round.unpublish.errors;
    if (round.unpublish.count === 0) throw new Error("no volume was unpublished");
  }
  const cyclesPerSec = (cycles / (performance.now() - t0)) * 1000;
  clearInterval(sampler);
  // At rest: the idle collection has run, and a child that leaves when idle has left.
  progress("memory: at rest");
  const restStarted = performance.now();
  await Bun.sleep(REST_MS);
  while (processTree(pid).length > 1 && performance.now() - restStarted < CHILD_EXIT_WAIT_MS) {
    await Bun.sleep(500);
  }
  if (performance.now() - restStarted > REST_MS) await Bun.sleep(SETTLE_MS);
  const atRest = treeMemory(pid);
  const restWaitMs = performance.now() - restStarted;
  await driver.process.stop();
  memory = { afterStart, peak, atRest, restWaitMs, cycles, cycleErrors, cyclesPerSec };
}

// 3. util-linux itself at each mount count: the ways to unmount a bind of the directory, and
// the mount table as --recursive-bind reads it. Spawned from here the way the driver spawns them.
interface CommandCell {
  mounts: number;
  name: string;
  p50Ms: number;
}
const commandCells: CommandCell[] = [];
const commandsDir = join(root, "commands");
mkdirSync(commandsDir);

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
    "`umount --no-canonicalize --lazy` through the mount's root",
    (_, root) => [["umount", "--no-canonicalize", "--lazy", "/proc/self/fd/3"], [root]],
  ],
  [
    "`umount --no-canonicalize` through the covered directory",
    (covered) => [["umount", "--no-canonicalize", "/proc/self/fd/3"], [covered]],
  ],
  [
    "`umount --internal-only --no-mtab` through the covered directory (the driver's way)",
    (covered) => [["umount", "--internal-only", "--no-mtab", "/proc/self/fd/3"], [covered]],
  ],
  [
    "`umount PATH` (resolves the path again: not race-free)",
    (_, __, path) => [["umount", path], []],
  ],
];

async function measureCommands(mounts: number): Promise<void> {
  const target = join(commandsDir, "target");
  mkdirSync(target, { recursive: true });
  using source = openDirectory(socketDir);
  const samples = new Map<string, number[]>();
  const add = (name: string, ms: number) => samples.set(name, [...(samples.get(name) ?? []), ms]);
  for (let i = 0; i < COMMAND_RUNS; i++) {
    for (const [name, way] of UNMOUNT_WAYS) {
      using covered = openDirectory(target);
      add(
        "`mount --no-canonicalize --bind` through descriptors (the driver's way)",
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
    add("the whole table read and parsed", performance.now() - t0);
  }
  for (const [name, values] of samples) commandCells.push({ mounts, name, p50Ms: median(values) });
}

// 4. The matrix: mounts on the node x mode x build x concurrency x operation, and a burst.
interface Cell extends PhaseStats {
  build: string;
  mode: Mode;
  mounts: number;
  concurrency: number;
  operation: Operation;
  /** The driver's peak resident memory over the cell (all of its operations). */
  peakMb: number;
}
const cells: Cell[] = [];
const bursts: Cell[] = [];
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
    await load(driver, WARMUP_VOLUMES, 16);
  }
}
for (const mounts of MOUNT_LEVELS) {
  if (!parts.has("matrix") && !parts.has("commands")) break;
  growMountTable(mounts);
  const actual = mountCount();
  if (parts.has("matrix")) {
    progress(`mounts ${count(actual)}: the floor`);
    await measureFloor(mounts, FLOOR_RUNS / 2);
    progress(`mounts ${count(actual)}: the gRPC stack alone`);
    await measureStack(mounts);
  }
  if (parts.has("commands")) {
    progress(`mounts ${count(actual)}: util-linux commands`);
    await measureCommands(mounts);
  }
  for (const mode of MODES) {
    const builds = drivers.filter((driver) => driver.mode === mode);
    // With a baseline, the two builds take turns, A B B A, each with half the calls: a load
    // that drifts during the cell weighs on both alike. Each half's figures are averaged.
    const turns = builds.length === 2 ? [0, 1, 1, 0] : builds.map((_, index) => index);
    for (const concurrency of CONCURRENCY) {
      const rounds = builds.map(() => [] as Record<Operation, PhaseStats>[]);
      for (const driver of builds) peakSinceReset(driver.process.proc.pid);
      for (const turn of turns) {
        const driver = builds[turn] as Driver;
        progress(`mounts ${count(actual)}: ${driver.name}, ${mode}, c=${concurrency}`);
        const volumes = (VOLUMES(concurrency) * builds.length) / turns.length;
        rounds[turn]?.push(await load(driver, volumes, concurrency));
      }
      builds.forEach((driver, index) => {
        const peakMb = peakSinceReset(driver.process.proc.pid);
        for (const operation of OPERATIONS) {
          const each = (rounds[index] ?? []).map((round) => round[operation]);
          const mean = (key: "p50Ms" | "p99Ms" | "opsPerSec") =>
            each.reduce((sum, round) => sum + round[key], 0) / each.length;
          cells.push({
            build: driver.name,
            mode,
            mounts,
            concurrency,
            operation,
            count: each.reduce((sum, round) => sum + round.count, 0),
            errors: each.reduce((sum, round) => sum + round.errors, 0),
            p50Ms: mean("p50Ms"),
            p99Ms: mean("p99Ms"),
            opsPerSec: mean("opsPerSec"),
            peakMb,
          });
        }
      });
    }
    for (const driver of builds) {
      const pid = driver.process.proc.pid;
      progress(`mounts ${count(actual)}: ${driver.name}, ${mode}, burst`);
      const burst = await load(driver, BURST_VOLUMES, BURST_CONCURRENCY);
      bursts.push({
        ...burst.publish,
        errors: burst.publish.errors + burst.unpublish.errors,
        build: driver.name,
        mode,
        mounts,
        concurrency: BURST_CONCURRENCY,
        operation: "publish",
        peakMb: peakSinceReset(pid),
      });
    }
  }
  if (parts.has("matrix")) {
    progress(`mounts ${count(actual)}: the floor`);
    await measureFloor(mounts, FLOOR_RUNS / 2);
  }
}
for (const driver of drivers) await driver.process.stop();
if (emptyServer) {
  emptyServer.proc.kill("SIGTERM");
  await emptyServer.proc.exited;
}
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
const p50 = (mounts: number, concurrency: number, operation: Operation, build = "this build") =>
  find(build, "plain", mounts, concurrency, operation)?.p50Ms ?? Number.NaN;
const ratio = (mounts: number, operation: Operation) =>
  p50(mounts, 1, operation) / floorOf(mounts, operation).p50Ms;
const topMounts = MOUNT_LEVELS[MOUNT_LEVELS.length - 1] ?? 20;
const hasBaseline = cells.some((c) => c.build === "baseline");
const RATIO_GOAL = 1.3;

type Target = [name: string, target: string, measured: string, met: boolean];
const targets: Target[] = [];
if (cells.length > 0) {
  for (const mounts of MOUNT_LEVELS) {
    for (const operation of ["publish", "unpublish"] as const) {
      const value = ratio(mounts, operation);
      const floor = floorOf(mounts, operation).p50Ms;
      targets.push([
        `${operation} p50, ${count(mounts)} mounts, c=1, to the floor`,
        `≤ ${RATIO_GOAL}x`,
        `${fixed(value)}x (${fixed(p50(mounts, 1, operation))} ms / ${fixed(floor)} ms)`,
        value <= RATIO_GOAL,
      ]);
    }
  }
  const levelFor1000 = MOUNT_LEVELS.includes(1000) ? 1000 : (MOUNT_LEVELS[0] ?? 20);
  const c1 = find("this build", "plain", levelFor1000, 1, "publish")?.opsPerSec ?? Number.NaN;
  const c16 = find("this build", "plain", levelFor1000, 16, "publish")?.opsPerSec ?? Number.NaN;
  if (CONCURRENCY.includes(16)) {
    targets.push([
      `publish ops/s, ${count(levelFor1000)} mounts, c=16, to its c=1 rate`,
      "≥ 2x",
      `${fixed(c16 / c1)}x (${fixed(c16, 0)} / ${fixed(c1, 0)} ops/s)`,
      c16 / c1 >= 2,
    ]);
  }
  const burst = bursts.find(
    (b) => b.build === "this build" && b.mode === "recursive" && b.mounts === topMounts,
  );
  if (burst) {
    targets.push([
      `--recursive-bind peak, ${count(topMounts)} mounts, c=${BURST_CONCURRENCY}`,
      "< 128 MiB",
      `${fixed(burst.peakMb, 1)} MiB`,
      burst.peakMb < 128,
    ]);
  }
}
if (memory) {
  targets.push(
    [
      `process tree at rest after ${count(memory.cycles)} publish/unpublish cycles (PSS, summed)`,
      "≤ 50 MB",
      `${fixed(memory.atRest.pssMb, 1)} MB in ${memory.atRest.processes.length} process${memory.atRest.processes.length > 1 ? "es" : ""}`,
      memory.atRest.pssMb <= 50,
    ],
    [
      "process tree 1 s after start (PSS, summed)",
      "≤ 45 MB",
      `${fixed(memory.afterStart.pssMb, 1)} MB in ${memory.afterStart.processes.length} process${memory.afterStart.processes.length > 1 ? "es" : ""}`,
      memory.afterStart.pssMb <= 45,
    ],
  );
}
if (listenTimes.length > 0) {
  targets.push([
    `exec to listening socket, median of ${STARTS}`,
    "≤ 30 ms",
    `${fixed(median(listenTimes), 1)} ms`,
    median(listenTimes) <= 30,
  ]);
}

const describeTree = (tree: TreeMemory) =>
  tree.processes
    .map(
      (each, index) =>
        `${index === 0 ? "driver" : "child"} ${fixed(each.pssMb, 1)} MB PSS (${fixed(each.rssMb, 1)} resident, ${fixed(each.anonMb, 1)} anonymous)`,
    )
    .join(", ");

const machine = `${cpus().length} cores (${cpus()[0]?.model.trim() ?? "unknown CPU"}), ${(totalmem() / 2 ** 30).toFixed(0)} GiB, Linux ${readFileSync("/proc/sys/kernel/osrelease", "utf8").trim()}, Bun ${Bun.version}, util-linux ${
  Bun.spawnSync(["umount", "--version"])
    .stdout.toString()
    .match(/util-linux ([\d.]+)/)?.[1] ?? "?"
}`;
const elapsedMin = (performance.now() - started) / 60_000;
const floorHow = python
  ? "a `mount --bind` and its `umount` started with posix_spawn by a small parent (tests/bench/floor.py)"
  : "a `mount --bind` and its `umount` started with Bun.spawn by the benchmark (no python3 here for the small parent)";
const lines = [
  `Machine: ${machine}. ${new Date().toISOString().slice(0, 10)}. Client: ${client.name}. Load average ${fixed(loadBefore, 1)} at the start, ${fixed(loadavg()[0] ?? 0, 1)} at the end; the run took ${fixed(elapsedMin, 1)} min.${quick ? " Quick run (BENCH_QUICK=1)." : ""}${selinuxLabel ? ` --selinux-label ${selinuxLabel} (BENCH_SELINUX_LABEL).` : ""}${hasBaseline ? ` Baseline: ${process.env.BENCH_BASELINE} (BENCH_BASELINE), measured beside this build at each mount count.` : ""}`,
  "",
  `The floor is ${floorHow}, timed in the same run at each mount count; a ratio is the driver's figure over the floor's.`,
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
if (floors.size > 0) {
  lines.push(
    "**The floor**, p50 / p99 (ms), and the same commands started with Bun.spawn from the benchmark (p50).",
    "",
    "| mounts | `mount --bind` | `umount` | Bun.spawn `mount --bind` | Bun.spawn `umount` |",
    "|---:|---:|---:|---:|---:|",
    ...[...floors].map(([mounts, samples]) => {
      const pair = (values: number[]) => {
        const sorted = [...values].sort((a, b) => a - b);
        return `${fixed(percentile(sorted, 50))} / ${fixed(percentile(sorted, 99))}`;
      };
      return `| ${count(mounts)} | ${pair(samples.mount)} | ${pair(samples.umount)} | ${fixed(median(samples.bunMount))} | ${fixed(median(samples.bunUmount))} |`;
    }),
    "",
  );
}
if (stack.size > 0) {
  const floorAndStack = (mounts: number, operation: Operation) => {
    const floor = floorOf(mounts, operation).p50Ms;
    const sum = floor + (stack.get(mounts)?.[operation].p50Ms ?? Number.NaN);
    return `${fixed(sum)} ms, ${fixed(sum / floor)}x`;
  };
  lines.push(
    "**The gRPC stack alone**: the same client against the driver's own gRPC server (src/rpc/, grpc-js) with handlers that answer at once (tests/bench/empty-server.ts), p50 at c=1 (ms; a publish's includes the client making the volume directory, as the kubelet does before it calls). No publish can take less than the floor and this together, the last columns as a ratio to the floor.",
    "",
    "| mounts | publish | re-publish | stats | unpublish | floor + stack, publish | floor + stack, unpublish |",
    "|---:|---:|---:|---:|---:|---:|---:|",
    ...[...stack].map(
      ([mounts, phases]) =>
        `| ${count(mounts)} | ${fixed(phases.publish.p50Ms)} | ${fixed(phases.republish.p50Ms)} | ${fixed(phases.stats.p50Ms)} | ${fixed(phases.unpublish.p50Ms)} | ${floorAndStack(mounts, "publish")} | ${floorAndStack(mounts, "unpublish")} |`,
    ),
    "",
  );
}
if (memory) {
  lines.push(
    `**Memory** of the driver's process tree (PSS summed over every process; a page shared by n processes counts 1/n in each): 1 s after start ${fixed(memory.afterStart.pssMb, 1)} MB (${describeTree(memory.afterStart)}); at its peak over ${count(memory.cycles)} publish/unpublish cycles at c=16 (${fixed(memory.cyclesPerSec, 0)} cycles/s, ${memory.cycleErrors} errors) ${fixed(memory.peak.pssMb, 1)} MB (${describeTree(memory.peak)}); at rest after them (${fixed(memory.restWaitMs / 1000, 1)} s after the last call) ${fixed(memory.atRest.pssMb, 1)} MB (${describeTree(memory.atRest)}).`,
    "",
  );
}
if (listenTimes.length > 0) {
  lines.push(
    `**Start-up**, ${STARTS} starts: exec to the socket listening median ${fixed(median(listenTimes), 1)} ms (min ${fixed(Math.min(...listenTimes), 1)}, max ${fixed(Math.max(...listenTimes), 1)}); exec to a socket answering Probe median ${fixed(median(startTimes), 1)} ms; with \`--health-addr\` (as the DaemonSet runs it), exec to the CSI socket listening median ${fixed(median(healthListenTimes), 1)} ms.`,
    "",
  );
}
for (const mode of MODES) {
  const rows = cells.filter((c) => c.mode === mode && c.build === "this build");
  if (rows.length === 0) continue;
  lines.push(
    `**${mode === "plain" ? "Plain bind" : "`--recursive-bind`"}**: p50 and p99 per call (ms) and their ratios to the floor's p50 and p99 (a publish's and a re-publish's and stats' to \`mount --bind\`, an unpublish's to \`umount\`), ops/s over the phase, the driver's peak resident memory over the cell${hasBaseline ? "; the baseline's p50 and peak beside" : ""}.`,
    "",
    `| mounts | c | operation | calls | errors | p50 | p99 | p50 / floor | p99 / floor | ops/s | peak MiB |${hasBaseline ? " baseline p50 | this / baseline | baseline peak MiB |" : ""}`,
    `|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|${hasBaseline ? "---:|---:|---:|" : ""}`,
    ...rows.map((c) => {
      const floor = floorOf(c.mounts, c.operation);
      const base = find("baseline", mode, c.mounts, c.concurrency, c.operation);
      const baseline = hasBaseline
        ? ` ${fixed(base?.p50Ms ?? Number.NaN)} | ${fixed(c.p50Ms / (base?.p50Ms ?? Number.NaN))}x | ${fixed(base?.peakMb ?? Number.NaN, 0)} |`
        : "";
      return `| ${count(c.mounts)} | ${c.concurrency} | ${c.operation} | ${c.count} | ${c.errors} | ${fixed(c.p50Ms)} | ${fixed(c.p99Ms)} | ${fixed(c.p50Ms / floor.p50Ms)}x | ${fixed(c.p99Ms / floor.p99Ms)}x | ${fixed(c.opsPerSec, 0)} | ${fixed(c.peakMb, 0)} |${baseline}`;
    }),
    "",
  );
}
if (bursts.length > 0) {
  const builds = [...new Set(bursts.map((c) => c.build))];
  const columns = MODES.flatMap((mode) => builds.map((build) => ({ mode, build })));
  lines.push(
    `**Bursts**: ${BURST_VOLUMES} volumes published at c=${BURST_CONCURRENCY}, then unpublished; the driver's peak resident memory (MiB) and the publish p50 (ms).`,
    "",
    `| mounts | ${columns.map(({ mode, build }) => `${mode}, ${build}`).join(" | ")} |`,
    `|---:|${columns.map(() => "---:|").join("")}`,
    ...MOUNT_LEVELS.map((mounts) => {
      const values = columns.map(({ mode, build }) => {
        const burst = bursts.find(
          (b) => b.build === build && b.mode === mode && b.mounts === mounts,
        );
        return burst
          ? `${fixed(burst.peakMb, 0)} MiB, ${fixed(burst.p50Ms, 1)} ms${burst.errors > 0 ? `, ${burst.errors} errors` : ""}`
          : "-";
      });
      return `| ${count(mounts)} | ${values.join(" | ")} |`;
    }),
    "",
  );
}
if (commandCells.length > 0) {
  const names = [...new Set(commandCells.map((c) => c.name))];
  const levels = [...new Set(commandCells.map((c) => c.mounts))];
  lines.push(
    `**util-linux and the mount table alone**, p50 of ${COMMAND_RUNS} runs (ms), spawned from the benchmark the way the driver spawns them.`,
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
const table = lines.join("\n").trimEnd();
console.log(table);

writeFileSync(
  join(repo, "docs", "benchmarks.json"),
  `${JSON.stringify(
    {
      machine,
      client: client.name,
      quick,
      startTimes,
      listenTimes,
      healthListenTimes,
      memory,
      floors: Object.fromEntries(floors),
      stack: Object.fromEntries(stack),
      cells,
      bursts,
      commands: commandCells,
    },
    null,
    2,
  )}\n`,
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
