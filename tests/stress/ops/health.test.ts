// Load on the health port while kubelet-like probes (a connection each, 1 s timeout) and
// publishes run: 2,000 keep-alive clients from 40 addresses looping on /healthz, then on
// /metrics; 400 connections each writing 2,000 pipelined requests at once; then floods from one
// address: 2,000 looping keep-alive clients, and 4,000 clients that connect, send nothing and
// reconnect when closed. Every probe answers and memory stays under the DaemonSet's limit;
// publish latency is printed, not asserted (timing targets belong in the benchmark).
//
// The probes come from 127.0.0.2 and the load from other loopback addresses (the whole of 127/8
// is loopback on Linux), as the kubelet's probes come from the node's address and a flood from a
// pod's: the driver caps connections per remote address.
//
// The load runs in a process of its own (tests/helpers/http-load.ts). 2,000 connections need more
// descriptors than a default open-file limit of 1,024 gives, on both ends: the load process is
// started under `prlimit --nofile`, and the driver's limit is raised with `prlimit --pid` (root).
import { expect, test } from "bun:test";
import { mkdirSync, readdirSync } from "node:fs";
import { join, resolve } from "node:path";
import { clients } from "../../helpers/driver.ts";
import { probe } from "../../helpers/http.ts";
import {
  publishRequest,
  removeVolume,
  residentMemory,
  unpublishRequest,
} from "../../helpers/kubelet.ts";
import { freePort } from "../../helpers/port.ts";
import { mountTestbed } from "../../helpers/testbed.ts";

const CLIENTS = 2_000;
const LOAD_SECONDS = 8;
const FLOOD_SECONDS = 6;
// Where the kubelet's probes come from; the load comes from other addresses.
const PROBE_FROM = "127.0.0.2";
// The driver's cap of connections per remote address (src/ops/health.ts).
const PER_ADDRESS = 64;
const PROBE_TIMEOUT_MS = 1_000;
// The DaemonSet's memory limit (deploy/kubernetes): 256Mi.
const MEMORY_LIMIT_MB = 256;
const OPEN_FILES = 16_384;
const LOAD = resolve(import.meta.dir, "../../helpers/http-load.ts");

const bed = mountTestbed("health");
const { kubeletRoot, csiSocketPath } = bed;
mkdirSync(join(kubeletRoot, "pods"), { recursive: true });
const port = freePort();

interface Phase {
  name: string;
  publishMs: number[];
  publishErrors: string[];
  probes: { path: string; status: number; ms: number; error?: string }[];
  peakRssMb: number;
  peakDescriptors: number;
  load?: Load;
}

interface Load {
  answers: number;
  connections: number;
  refused: number;
  maxOpen: number;
}

const quantile = (values: number[], q: number) => {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] ?? Number.NaN;
};

test("keep-alive clients, pipelined requests and one-address floods, while probes and publishes run", async () => {
  const driver = await bed.start(["--health-addr", `127.0.0.1:${port}`, "--log-format", "json"]);
  const raised = Bun.spawnSync([
    "prlimit",
    `--pid=${driver.proc.pid}`,
    `--nofile=${OPEN_FILES}:${OPEN_FILES}`,
  ]);
  expect(raised.exitCode).toBe(0);
  const { node } = clients(csiSocketPath);

  /** Runs for `seconds` (or until `until` settles): publishes, probes, memory samples. */
  async function phase(name: string, until: Promise<unknown>): Promise<Phase> {
    const result: Phase = {
      name,
      publishMs: [],
      publishErrors: [],
      probes: [],
      peakRssMb: 0,
      peakDescriptors: 0,
    };
    let done = false;
    void until.finally(() => {
      done = true;
    });
    const publishing = (async () => {
      while (!done) {
        const volume = bed.volume();
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
              const { status } = await probe(port, path, PROBE_TIMEOUT_MS, PROBE_FROM);
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
        result.peakDescriptors = Math.max(
          result.peakDescriptors,
          readdirSync(`/proc/${driver.proc.pid}/fd`).length,
        );
        await Bun.sleep(200);
      }
    })();
    await Promise.all([until, publishing, probing, sampling]);
    return result;
  }

  /** `clients` clients from `from` (`address/count`) for `seconds`; see http-load.ts. */
  async function load(
    path: string,
    clients: number,
    seconds: number,
    from: string,
    pipeline = 1,
  ): Promise<Load> {
    const proc = Bun.spawn(
      [
        "prlimit",
        `--nofile=${OPEN_FILES}:${OPEN_FILES}`,
        process.execPath,
        LOAD,
        String(port),
        path,
        String(clients),
        String(seconds),
        from,
        String(pipeline),
      ],
      { stdout: "pipe", stderr: "inherit" },
    );
    const [out, code] = await Promise.all([new Response(proc.stdout).text(), proc.exited]);
    expect(code).toBe(0);
    return JSON.parse(out);
  }

  const loaded = async (name: string, running: Promise<Load>) => {
    let figures: Load | undefined;
    const result = await phase(
      name,
      running.then((answer) => {
        figures = answer;
      }),
    );
    result.load = figures;
    return result;
  };

  const quiet = await phase("no load", Bun.sleep(3_000));
  // 50 clients an address: under the cap, as many pods' scrapers would be.
  const spread: Phase[] = [];
  for (const path of ["/healthz", "/metrics"]) {
    spread.push(
      await loaded(
        `${CLIENTS} clients from 40 addresses on ${path}`,
        load(path, CLIENTS, LOAD_SECONDS, "127.0.1.1/40"),
      ),
    );
  }
  const pipelined = await loaded(
    "400 connections from 10 addresses, 2,000 pipelined requests each",
    load("/healthz", 400, FLOOD_SECONDS, "127.0.2.1/10", 2_000),
  );
  const oneAddress = await loaded(
    `${CLIENTS} looping clients from one address`,
    load("/healthz", CLIENTS, FLOOD_SECONDS, "127.0.0.1/1"),
  );
  const silent = await loaded(
    "4,000 silent, reconnecting clients from one address",
    load("/healthz", 4_000, FLOOD_SECONDS, "127.0.0.1/1", 0),
  );
  const phases = [quiet, ...spread, pipelined, oneAddress, silent];
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
        `peak RSS ${result.peakRssMb.toFixed(1)} MiB, peak descriptors ${result.peakDescriptors}${load}`,
    );
  }
  for (const result of phases) {
    expect(result.probes.filter((p) => p.status !== 200)).toEqual([]);
    expect(result.probes.length).toBeGreaterThan(0);
    expect(result.publishErrors).toEqual([]);
    expect(result.peakRssMb).toBeLessThan(MEMORY_LIMIT_MB);
  }
  // The load reached the port: the clients were answered, on their own connections.
  for (const result of spread) {
    expect(result.load?.maxOpen).toBeGreaterThanOrEqual(CLIENTS * 0.9);
  }
  // A pipelining connection is closed at its second request: one answer at most.
  expect(pipelined.load?.connections).toBeGreaterThanOrEqual(400);
  expect(pipelined.load?.answers).toBeLessThanOrEqual(pipelined.load?.connections ?? 0);
  // One address holds at most its share, however many connections it opens.
  expect(oneAddress.load?.connections).toBeGreaterThanOrEqual(CLIENTS);
  expect(oneAddress.load?.answers).toBeGreaterThan(0);
  expect(silent.load?.connections).toBeGreaterThanOrEqual(4_000);
  // The driver's descriptors: its own, its cap for that address and as many again waiting for
  // their first request beyond it (a probe among them is answered), not thousands.
  for (const flood of [oneAddress, silent]) {
    expect(flood.peakDescriptors).toBeLessThan(quiet.peakDescriptors + 4 * PER_ADDRESS);
  }

  // Only the driver's own JSON lines on stderr.
  for (const line of stderr.trimEnd().split("\n")) expect(() => JSON.parse(line)).not.toThrow();
}, 240_000);
