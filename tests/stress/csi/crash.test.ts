// The driver killed with SIGKILL at random moments during churn, restarted, and every unfinished
// call replayed as the kubelet would: in the end every volume is exactly as the kubelet wants it.
import { expect, test } from "bun:test";
import { existsSync } from "node:fs";
import { status } from "@grpc/grpc-js";
import { talkToAgent } from "../../helpers/agent.ts";
import { clients, type DriverProcess } from "../../helpers/driver.ts";
import {
  mountsAt,
  mountsUnder,
  type PodVolume,
  publishRequest,
  unpublishRequest,
} from "../../helpers/kubelet.ts";
import { mountTestbed } from "../../helpers/testbed.ts";
import { PATIENCE_MS, waitFor } from "../../helpers/wait.ts";

const KILLS = 25;
const VOLUMES = 300;
const WORKERS = 16;
// The kubelet retries these; anything else is a final error and a failure of this test.
const RETRIED = new Set([
  status.UNAVAILABLE,
  status.CANCELLED,
  status.DEADLINE_EXCEEDED,
  status.ABORTED,
]);

const bed = mountTestbed("crash");
const { root, csiSocketPath } = bed;

test(`${KILLS} SIGKILLs during churn: every volume ends as the kubelet wants it`, async () => {
  const start = () => bed.start();
  let driver: DriverProcess = await start();
  // Reconnect fast after a restart, as a kubelet's client would within its retry.
  const { node } = clients(csiSocketPath, {
    "grpc.initial_reconnect_backoff_ms": 20,
    "grpc.max_reconnect_backoff_ms": 100,
  });

  const volumes: PodVolume[] = Array.from({ length: VOLUMES }, () => {
    const volume = bed.volume();
    return volume;
  });
  const wanted = new Map<PodVolume, boolean>(volumes.map((v) => [v, false]));
  const busy = new Set<PodVolume>();
  const finalErrors: string[] = [];
  let retries = 0;
  let calls = 0;
  let killing = true;

  /** Calls until the driver answers OK, retrying what the kubelet retries. */
  async function untilDone(call: () => Promise<unknown>): Promise<void> {
    for (;;) {
      try {
        await call();
        calls++;
        return;
      } catch (error) {
        const { code, details } = error as { code: number; details: string };
        if (!RETRIED.has(code)) {
          finalErrors.push(`${status[code]}: ${details}`);
          return;
        }
        retries++;
        await Bun.sleep(10);
      }
    }
  }

  const worker = async () => {
    while (killing) {
      const volume = volumes[Math.floor(Math.random() * volumes.length)] as PodVolume;
      if (busy.has(volume)) continue;
      busy.add(volume);
      const publish = !wanted.get(volume);
      wanted.set(volume, publish);
      await untilDone(() =>
        publish
          ? node.nodePublishVolume(publishRequest(volume), { deadline: Date.now() + PATIENCE_MS })
          : node.nodeUnpublishVolume(unpublishRequest(volume), {
              deadline: Date.now() + PATIENCE_MS,
            }),
      );
      busy.delete(volume);
    }
  };

  const killer = async () => {
    for (let kill = 0; kill < KILLS; kill++) {
      // Each driver is killed mid-churn: once it has answered calls, at a random moment after.
      const answered = calls;
      await waitFor("calls answered by the restarted driver", () => calls >= answered + WORKERS);
      await Bun.sleep(150 + Math.random() * 450);
      await driver.stop("SIGKILL");
      // The killed process left its socket behind; the new one must start anyway.
      driver = await start();
    }
    killing = false;
  };

  await Promise.all([killer(), ...Array.from({ length: WORKERS }, worker)]);

  let mounted = 0;
  const wrong: string[] = [];
  for (const volume of volumes) {
    const mounts = mountsAt(volume.targetPath);
    if (wanted.get(volume)) {
      mounted++;
      if (mounts !== 1) wrong.push(`${volume.targetPath}: published, ${mounts} mounts`);
    } else if (mounts !== 0 || existsSync(volume.targetPath)) {
      wrong.push(
        `${volume.targetPath}: unpublished, ${mounts} mounts, directory ${existsSync(volume.targetPath) ? "left" : "gone"}`,
      );
    }
  }
  const sample = volumes.filter((v) => wanted.get(v)).slice(0, 5);
  for (const volume of sample) expect(await talkToAgent(volume.targetPath)).toBe("pong ping");

  console.log(
    `crash: ${KILLS} SIGKILLs, ${calls} calls answered OK, ${retries} retries after kills, ${finalErrors.length} final errors; ` +
      `at the end ${mounted} volumes published (each checked for exactly one mount), ${VOLUMES - mounted} unpublished (no mount, no directory)`,
  );
  expect(finalErrors.slice(0, 5)).toEqual([]);
  expect(wrong.slice(0, 5)).toEqual([]);
  // The pods go: the kubelet unpublishes every volume, and nothing stays mounted.
  for (const volume of volumes) await node.nodeUnpublishVolume(unpublishRequest(volume));
  await driver.stop();
  expect(mountsUnder(root)).toBe(0);
}, 300_000);
