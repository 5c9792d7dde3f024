// SIGTERM during churn: calls in flight finish or are cleanly refused, no mount is half made, the
// socket goes, and a restarted driver finishes the kubelet's work.
import { expect, test } from "bun:test";
import { existsSync, readdirSync } from "node:fs";
import { status } from "@grpc/grpc-js";
import { talkToAgent } from "../../helpers/agent.ts";
import { clients } from "../../helpers/driver.ts";
import {
  mountsAt,
  mountsUnder,
  type PodVolume,
  publishRequest,
  unpublishRequest,
} from "../../helpers/kubelet.ts";
import { mountTestbed } from "../../helpers/testbed.ts";
import { waitFor } from "../../helpers/wait.ts";

const CONCURRENCY = 32;
const ROUNDS = 5;

const bed = mountTestbed("shutdown");
const { root, csiSocketPath } = bed;

test(`SIGTERM during churn at concurrency ${CONCURRENCY}, ${ROUNDS} times`, async () => {
  const outcomes = new Map<string, number>();
  const volumes: PodVolume[] = [];
  let exits = 0;

  for (let round = 0; round < ROUNDS; round++) {
    const driver = await bed.start();
    const { node } = clients(csiSocketPath);
    let stopping = false;
    let answered = 0;
    const worker = async () => {
      while (!stopping) {
        const volume = bed.volume();
        volumes.push(volume);
        for (const call of [
          () => node.nodePublishVolume(publishRequest(volume)),
          () => node.nodeUnpublishVolume(unpublishRequest(volume)),
        ]) {
          try {
            await call();
            answered++;
            outcomes.set("OK", (outcomes.get("OK") ?? 0) + 1);
          } catch (error) {
            const name = status[(error as { code: number }).code] ?? "?";
            outcomes.set(name, (outcomes.get(name) ?? 0) + 1);
            return;
          }
        }
      }
    };
    const workers = Array.from({ length: CONCURRENCY }, worker);
    // SIGTERM mid-churn: once the driver has answered calls, at a random moment after.
    await waitFor("the driver to answer calls", () => answered >= CONCURRENCY);
    await Bun.sleep(300 + Math.random() * 700);
    const { code } = await driver.stop("SIGTERM");
    stopping = true;
    await Promise.all(workers);
    expect(code).toBe(0);
    exits++;
    expect(existsSync(csiSocketPath)).toBe(false);

    // No half-made mount: each target is one bind of the agent's directory, or none.
    for (const volume of volumes) {
      const mounts = mountsAt(volume.targetPath);
      expect(mounts).toBeLessThanOrEqual(1);
      if (mounts === 1) expect(await talkToAgent(volume.targetPath)).toBe("pong ping");
      else if (existsSync(volume.targetPath)) expect(readdirSync(volume.targetPath)).toEqual([]);
    }
  }

  // The kubelet retries what was refused: unpublishing everything leaves nothing.
  const driver = await bed.start();
  const { node } = clients(csiSocketPath);
  for (const volume of volumes) await node.nodeUnpublishVolume(unpublishRequest(volume));
  await driver.stop();
  console.log(
    `shutdown: ${ROUNDS} SIGTERMs during churn, ${exits} clean exits (status 0, socket removed); calls: ${[...outcomes].map(([k, v]) => `${k} ${v}`).join(", ")}; ${volumes.length} volumes, none half made`,
  );
  expect(mountsUnder(root)).toBe(0);
  // Refused calls are refusals the kubelet retries, never a final error.
  for (const name of outcomes.keys()) expect(["OK", "UNAVAILABLE", "CANCELLED"]).toContain(name);
}, 300_000);
