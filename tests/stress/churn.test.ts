// 10,000 kubelet-like publish/unpublish cycles at concurrency 32, with re-publishes and stats in
// between: no error, nothing left behind, memory back where it started.
import { expect, test } from "bun:test";
import { existsSync, mkdirSync, readdirSync } from "node:fs";
import { join } from "node:path";
import { assertPrivateMountNamespace, clients, startDriver } from "../helpers/driver.ts";
import {
  mountsUnder,
  podVolume,
  prepareVolume,
  publishRequest,
  removeVolume,
  residentMemory,
  statsRequest,
  unpublishRequest,
} from "../helpers/kubelet.ts";
import { testbed } from "../helpers/testbed.ts";

assertPrivateMountNamespace();

const CYCLES = 10_000;
const WARMUP = 1_000;
const CONCURRENCY = 32;

const { root, socketDir, kubeletRoot, csiSocketPath } = testbed("churn");
mkdirSync(join(kubeletRoot, "pods"), { recursive: true });

test(`${CYCLES.toLocaleString("en")} cycles at concurrency ${CONCURRENCY}`, async () => {
  const driver = await startDriver({ workloadApiSocketDir: socketDir, csiSocketPath });
  const { node } = clients(csiSocketPath);
  const errors: string[] = [];
  let calls = 0;

  async function churn(cycles: number): Promise<void> {
    let next = 0;
    const worker = async () => {
      while (next < cycles) {
        const i = next++;
        const volume = podVolume(kubeletRoot);
        prepareVolume(volume);
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

  // Memory is compared at rest: the driver collects garbage after a second without calls.
  const SETTLE_MS = 2500;
  await churn(WARMUP);
  await Bun.sleep(SETTLE_MS);
  const before = residentMemory(driver.proc.pid);
  const started = performance.now();
  calls = 0;
  await churn(CYCLES);
  const seconds = (performance.now() - started) / 1000;
  await Bun.sleep(SETTLE_MS);
  const after = residentMemory(driver.proc.pid);
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
