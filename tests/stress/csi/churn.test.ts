// 10,000 kubelet-like publish/unpublish cycles at concurrency 32, with re-publishes and stats in
// between: no error, nothing left behind, memory back where it started.
import { expect, test } from "bun:test";
import { existsSync, mkdirSync, readdirSync } from "node:fs";
import { join } from "node:path";
import { clients } from "../../helpers/driver.ts";
import {
  mountsUnder,
  publishRequest,
  removeVolume,
  residentMemory,
  statsRequest,
  unpublishRequest,
} from "../../helpers/kubelet.ts";
import { mountTestbed } from "../../helpers/testbed.ts";
import { waitFor } from "../../helpers/wait.ts";

const CYCLES = 10_000;
const WARMUP = 1_000;
const CONCURRENCY = 32;

const bed = mountTestbed("churn");
const { root, kubeletRoot, csiSocketPath } = bed;
mkdirSync(join(kubeletRoot, "pods"), { recursive: true });

// The driver collects garbage after a second without a call, and gives the freed memory back
// after this long (src/ops/memory.ts): it is then at rest.
const REST_MS = 30_000;

/**
 * The process's memory at rest: read every half second from the rest period after the last call
 * on, until four readings in a row agree within half a megabyte.
 */
async function memoryAtRest(pid: number): Promise<ReturnType<typeof residentMemory>> {
  const lastCall = Date.now();
  const readings: number[] = [];
  return waitFor(
    "resident memory to settle",
    async () => {
      await Bun.sleep(500);
      if (Date.now() - lastCall < REST_MS + 1_000) return false;
      const memory = residentMemory(pid);
      readings.push(memory.rssMb);
      const recent = readings.slice(-4);
      return recent.length === 4 && Math.max(...recent) - Math.min(...recent) < 0.5 && memory;
    },
    REST_MS + 60_000,
  );
}

test(`${CYCLES.toLocaleString("en")} cycles at concurrency ${CONCURRENCY}`, async () => {
  const driver = await bed.start();
  const { node } = clients(csiSocketPath);
  const errors: string[] = [];
  let calls = 0;

  async function churn(cycles: number): Promise<void> {
    let next = 0;
    const worker = async () => {
      while (next < cycles) {
        const i = next++;
        const volume = bed.volume();
        try {
          await node.nodePublishVolume(publishRequest(volume));
          calls++;
          if (i % 2 === 0) {
            await node.nodePublishVolume(publishRequest(volume));
            calls++;
          }
          if (i % 3 === 0) {
            const stats = await node.nodeGetVolumeStats(statsRequest(volume));
            calls++;
            if (stats.volumeCondition?.abnormal)
              errors.push(`abnormal: ${stats.volumeCondition.message}`);
          }
          await node.nodeUnpublishVolume(unpublishRequest(volume));
          calls++;
          removeVolume(volume);
        } catch (error) {
          errors.push(String((error as Error).message));
        }
      }
    };
    await Promise.all(Array.from({ length: CONCURRENCY }, worker));
  }

  // Memory is compared at rest, after the driver's idle collection.
  await churn(WARMUP);
  const before = await memoryAtRest(driver.proc.pid);
  const started = performance.now();
  calls = 0;
  await churn(CYCLES);
  const seconds = (performance.now() - started) / 1000;
  const after = await memoryAtRest(driver.proc.pid);
  const { stderr } = await driver.stop();

  const growth = after.rssMb - before.rssMb;
  console.log(
    `churn: ${CYCLES} cycles, ${calls} calls in ${seconds.toFixed(1)} s (${(calls / seconds).toFixed(0)} calls/s), ${errors.length} errors; ` +
      `resident memory at rest after a ${WARMUP}-cycle warm-up ${before.rssMb.toFixed(1)} MB, after the churn ${after.rssMb.toFixed(1)} MB (${growth >= 0 ? "+" : ""}${growth.toFixed(1)} MB), peak ${after.peakMb.toFixed(1)} MB`,
  );
  expect(errors.slice(0, 5)).toEqual([]);
  expect(mountsUnder(root)).toBe(0);
  // The kubelet's clean-up removed every pod directory: the driver left no mount directory.
  expect(readdirSync(join(kubeletRoot, "pods"))).toEqual([]);
  expect(existsSync(csiSocketPath)).toBe(false);
  expect(stderr).not.toContain("code=INTERNAL");
  expect(growth).toBeLessThanOrEqual(5);
}, 600_000);
