// Load on the health port: 2,000 keep-alive clients looping on /healthz, then on /metrics, while
// kubelet-like probes (a connection each, 1 s timeout) and publishes run. Every probe answers and
// memory stays under the DaemonSet's limit; publish latency is printed, not asserted (timing
// targets belong in the benchmark).
//
// The load runs in a process of its own (tests/helpers/http-load.ts). 2,000 connections need more
// descriptors than a default open-file limit of 1,024 gives, on both ends: the load process is
// started under `prlimit --nofile`, and the driver's limit is raised with `prlimit --pid` (root).
import { expect, setDefaultTimeout, test } from "bun:test";
import { mkdirSync } from "node:fs";
import { join, resolve } from "node:path";
import { assertPrivateMountNamespace, clients, startDriver } from "../helpers/driver.ts";
import { probe } from "../helpers/http.ts";
import {
  podVolume,
  prepareVolume,
  publishRequest,
  removeVolume,
  residentMemory,
  unpublishRequest,
} from "../helpers/kubelet.ts";
import { testbed } from "../helpers/testbed.ts";

assertPrivateMountNamespace();
// Generous for a loaded machine: covers every test and hook of this file.
setDefaultTimeout(120_000);

const CLIENTS = 2_000;
const LOAD_SECONDS = 20;
const PROBE_TIMEOUT_MS = 1_000;
// The DaemonSet's memory limit (deploy/kubernetes): 256Mi.
const MEMORY_LIMIT_MB = 256;
const OPEN_FILES = 16_384;
const LOAD = resolve(import.meta.dir, "../helpers/http-load.ts");

const { socketDir, kubeletRoot, csiSocketPath } = testbed("health");
mkdirSync(join(kubeletRoot, "pods"), { recursive: true });
const port = 19_900 + Math.floor(Math.random() * 90);

interface Phase {
  name: string;
  publishMs: number[];
  publishErrors: string[];
  probes: { path: string; status: number; ms: number; error?: string }[];
  peakRssMb: number;
  load?: { answers: number; connections: number; refused: number; maxOpen: number };
}

const quantile = (values: number[], q: number) => {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] ?? Number.NaN;
};

test(`${CLIENTS} keep-alive clients on /healthz, then on /metrics, while probes and publishes run`, async () => {
  const driver = await startDriver({
    workloadApiSocketDir: socketDir,
    csiSocketPath,
    args: ["--health-addr", `127.0.0.1:${port}`, "--log-format", "json"],
  });
  const raised = Bun.spawnSync([
    "prlimit",
    `--pid=${driver.proc.pid}`,
    `--nofile=${OPEN_FILES}:${OPEN_FILES}`,
  ]);
  expect(raised.exitCode).toBe(0);
  const { node } = clients(csiSocketPath);

  /** Runs for `seconds` (or until `until` settles): publishes, probes, memory samples. */
  async function phase(name: string, until: Promise<unknown>): Promise<Phase> {
    const result: Phase = { name, publishMs: [], publishErrors: [], probes: [], peakRssMb: 0 };
    let done = false;
    void until.finally(() => {
      done = true;
    });
    const publishing = (async () => {
      while (!done) {
        const volume = podVolume(kubeletRoot);
        prepareVolume(volume);
        const started = performance.now();
        try {
          await node.nodePublishVolume(publishRequest(volume), { deadline: Date.now() + 30_000 });
          result.publishMs.push(performance.now() - started);
          await node.nodeUnpublishVolume(unpublishRequest(volume), {
            deadline: Date.now() + 30_000,
          });
          removeVolume(volume);
        } catch (error) {
          result.publishErrors.push((error as Error).message);
        }
      }
    })();
    const probing = (async () => {
      while (!done) {
        const tick = Bun.sleep(1_000);
        await Promise.all(
          ["/healthz", "/readyz"].map(async (path) => {
            const started = performance.now();
            try {
              const { status } = await probe(port, path, PROBE_TIMEOUT_MS);
              result.probes.push({ path, status, ms: performance.now() - started });
            } catch (error) {
              result.probes.push({
                path,
                status: 0,
                ms: performance.now() - started,
                error: (error as Error).message,
              });
            }
          }),
        );
        await tick;
      }
    })();
    const sampling = (async () => {
      while (!done) {
        result.peakRssMb = Math.max(result.peakRssMb, residentMemory(driver.proc.pid).rssMb);
        await Bun.sleep(200);
      }
    })();
    await Promise.all([until, publishing, probing, sampling]);
    return result;
  }

  async function load(path: string): Promise<Phase["load"]> {
    const proc = Bun.spawn(
      [
        "prlimit",
        `--nofile=${OPEN_FILES}:${OPEN_FILES}`,
        process.execPath,
        LOAD,
        String(port),
        path,
        String(CLIENTS),
        String(LOAD_SECONDS),
      ],
      { stdout: "pipe", stderr: "inherit" },
    );
    const [out, code] = await Promise.all([new Response(proc.stdout).text(), proc.exited]);
    expect(code).toBe(0);
    return JSON.parse(out);
  }

  const phases: Phase[] = [];
  phases.push(await phase("no load", Bun.sleep(5_000)));
  for (const path of ["/healthz", "/metrics"]) {
    let figures: Phase["load"];
    const result = await phase(
      `${CLIENTS} clients on ${path}`,
      load(path).then((answer) => {
        figures = answer;
      }),
    );
    result.load = figures;
    phases.push(result);
  }
  const { stderr } = await driver.stop();

  for (const result of phases) {
    const answered = result.probes.filter((p) => p.status === 200).length;
    const slowest = Math.max(...result.probes.map((p) => p.ms));
    const load = result.load
      ? `; load: ${result.load.answers} answers (${(result.load.answers / LOAD_SECONDS).toFixed(0)}/s), ${result.load.connections} connections opened, at most ${result.load.maxOpen} open at once, ${result.load.refused} refused`
      : "";
    console.log(
      `health ${result.name}: probes ${answered}/${result.probes.length} answered 200 within ${PROBE_TIMEOUT_MS} ms (slowest ${slowest.toFixed(0)} ms); ` +
        `publishes ${result.publishMs.length}, median ${quantile(result.publishMs, 0.5).toFixed(1)} ms, p99 ${quantile(result.publishMs, 0.99).toFixed(1)} ms, ${result.publishErrors.length} errors; ` +
        `peak RSS ${result.peakRssMb.toFixed(1)} MiB${load}`,
    );
  }
  for (const result of phases) {
    expect(result.probes.filter((p) => p.status !== 200)).toEqual([]);
    expect(result.probes.length).toBeGreaterThan(0);
    expect(result.publishErrors).toEqual([]);
    expect(result.peakRssMb).toBeLessThan(MEMORY_LIMIT_MB);
  }
  // The load reached the port: the clients were answered, on their own connections.
  for (const result of phases.slice(1)) {
    expect(result.load?.maxOpen).toBeGreaterThanOrEqual(CLIENTS * 0.9);
  }
  // Only the driver's own JSON lines on stderr.
  for (const line of stderr.trimEnd().split("\n")) expect(() => JSON.parse(line)).not.toThrow();
}, 240_000);
