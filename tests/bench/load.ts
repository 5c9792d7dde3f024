// The load generator: a separate process that plays the kubelet against the driver's socket.
// Usage: bun tests/bench/load.ts '<job json>'; prints one JSON result on stdout.
import { mkdirSync } from "node:fs";
import { Node } from "../../src/gen/csi/v1/csi_pb.ts";
import { createClient } from "../../src/rpc/client.ts";
import {
  type PodVolume,
  podVolume,
  prepareVolume,
  publishRequest,
  statsRequest,
  unpublishRequest,
} from "../helpers/kubelet.ts";

export interface Job {
  csiSocketPath: string;
  kubeletRoot: string;
  /** Each operation over this many fresh volumes. */
  volumes: number;
  concurrency: number;
  /** Each phase stops starting new calls after this long. */
  phaseLimitMs: number;
}

export interface PhaseResult {
  count: number;
  errors: number;
  firstError?: string;
  latenciesMs: number[];
  elapsedMs: number;
}

const job = JSON.parse(process.argv[2] ?? "{}") as Job;
mkdirSync(job.kubeletRoot, { recursive: true });
const node = createClient(Node, `unix://${job.csiSocketPath}`);

/** Runs `call` for each item with `concurrency` calls in flight, within the phase limit. */
async function phase<T>(
  items: T[],
  call: (item: T) => Promise<unknown>,
): Promise<PhaseResult & { done: T[] }> {
  const latenciesMs: number[] = [];
  const done: T[] = [];
  let errors = 0;
  let firstError: string | undefined;
  let next = 0;
  const started = performance.now();
  const worker = async () => {
    while (next < items.length && performance.now() - started < job.phaseLimitMs) {
      const item = items[next++] as T;
      const t0 = performance.now();
      try {
        await call(item);
        latenciesMs.push(performance.now() - t0);
        done.push(item);
      } catch (error) {
        errors++;
        firstError ??= String((error as Error).message);
      }
    }
  };
  await Promise.all(Array.from({ length: job.concurrency }, worker));
  return {
    count: latenciesMs.length,
    errors,
    firstError,
    latenciesMs,
    elapsedMs: performance.now() - started,
    done,
  };
}

function volumes(count: number): PodVolume[] {
  return Array.from({ length: count }, () => {
    const volume = podVolume(job.kubeletRoot);
    prepareVolume(volume);
    return volume;
  });
}

// One call first, so that the connection is up before anything is timed.
await node.nodeGetCapabilities({});

const results: Record<string, PhaseResult> = {};
const all = volumes(job.volumes);
const publish = await phase(all, (v) => node.nodePublishVolume(publishRequest(v)));
const published = publish.done;
const republish = await phase(published, (v) => node.nodePublishVolume(publishRequest(v)));
const stats = await phase(published, (v) => node.nodeGetVolumeStats(statsRequest(v)));
const unpublish = await phase(published, (v) => node.nodeUnpublishVolume(unpublishRequest(v)));
// Whatever the time limit cut short is unpublished untimed, so the node is left clean.
const unpublished = new Set(unpublish.done);
const left = published.filter((v) => !unpublished.has(v));
for (const v of left) await node.nodeUnpublishVolume(unpublishRequest(v));
for (const [name, result] of Object.entries({ publish, republish, stats, unpublish })) {
  const { done: _, ...rest } = result;
  results[name] = rest;
}
node.close();
process.stdout.write(JSON.stringify(results));
process.exit(0);
