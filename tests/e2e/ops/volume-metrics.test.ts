// The volume and readiness gauges of the real binary tell what the node shows, not what the driver
// remembers: targets unmounted or removed behind its back, an agent directory replaced, removed
// or seen stale, and an agent gone, each show in /metrics as the stats and /readyz tell it.
import { describe, expect, test } from "bun:test";
import { mkdirSync, renameSync, rmdirSync } from "node:fs";
import { join } from "node:path";
import { ABNORMAL_REASONS } from "../../../src/csi/stats.ts";
import { READINESS_KINDS } from "../../../src/ops/readiness.ts";
import { startAgent } from "../../helpers/agent.ts";
import { clients } from "../../helpers/driver.ts";
import {
  podVolume,
  prepareVolume,
  publishRequest,
  statsRequest,
  unpublishRequest,
} from "../../helpers/kubelet.ts";
import { freePort } from "../../helpers/port.ts";
import { mountTestbed } from "../../helpers/testbed.ts";
import { PATIENCE_MS, waitFor } from "../../helpers/wait.ts";

const bed = mountTestbed("volume-metrics", { agent: false });
const { root, socketDir, kubeletRoot: kubelet } = bed;
const mounted: string[] = [];
bed.beforeCleanup(() => {
  for (const path of mounted.reverse()) Bun.spawnSync(["umount", "-l", path]);
});

const port = freePort();
const csiSocketPath = join(root, "csi", "csi.sock");

/** The value of one sample in a /metrics answer, e.g. `spiffe_csi_abnormal_volumes{reason="x"}`. */
function sample(body: string, series: string): number | undefined {
  const line = body.split("\n").find((l) => l.startsWith(`${series} `));
  return line === undefined ? undefined : Number(line.slice(series.length + 1));
}

/** Waits until /metrics shows every sample in `wanted` (answers are up to a second old). */
async function metricsShow(wanted: Record<string, number>): Promise<string> {
  let last = "";
  return waitFor(
    () => `/metrics to show ${JSON.stringify(wanted)}; last:\n${last}`,
    async () => {
      last = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
      const all = Object.entries(wanted).every(([series, value]) => sample(last, series) === value);
      return all ? last : undefined;
    },
    PATIENCE_MS,
  );
}

const abnormal = (reason: string) => `spiffe_csi_abnormal_volumes{reason="${reason}"}`;
const readiness = (kind: string) => `spiffe_csi_readiness_problems{kind="${kind}"}`;
const PUBLISHED = "spiffe_csi_published_volumes";

describe("the volume gauges follow the targets", async () => {
  const agent = startAgent(socketDir);
  await bed.start(["--health-addr", `127.0.0.1:${port}`], { csiSocketPath });
  const { node } = clients(csiSocketPath);
  const volumes = [podVolume(kubelet), podVolume(kubelet), podVolume(kubelet)];
  for (const volume of volumes) {
    prepareVolume(volume);
    await node.nodePublishVolume(publishRequest(volume));
  }
  const [unmounted, removed, kept] = volumes as [
    (typeof volumes)[0],
    (typeof volumes)[0],
    (typeof volumes)[0],
  ];

  test("three published volumes show, every reason and kind at 0", async () => {
    const body = await metricsShow({ [PUBLISHED]: 3, [readiness("agent_no_socket")]: 0 });
    for (const reason of ABNORMAL_REASONS) expect(sample(body, abnormal(reason))).toBe(0);
    for (const kind of READINESS_KINDS) expect(sample(body, readiness(kind))).toBe(0);
  });

  test("a target unmounted behind the driver's back: the gauge drops, it shows as not mounted", async () => {
    expect(Bun.spawnSync(["umount", unmounted.targetPath]).exitCode).toBe(0);
    await metricsShow({ [PUBLISHED]: 2, [abnormal("not_mounted")]: 1 });
    const stats = await node.nodeGetVolumeStats(statsRequest(unmounted));
    expect(stats.volumeCondition?.abnormal).toBe(true);
    expect(stats.volumeCondition?.message).toContain("is not a mount point");
  });

  test("a target removed behind the driver's back shows as gone", async () => {
    expect(Bun.spawnSync(["umount", removed.targetPath]).exitCode).toBe(0);
    rmdirSync(removed.targetPath);
    await metricsShow({
      [PUBLISHED]: 1,
      [abnormal("not_mounted")]: 1,
      [abnormal("target_gone")]: 1,
    });
  });

  test("unpublishing them takes them out of the count", async () => {
    await node.nodeUnpublishVolume(unpublishRequest(unmounted));
    await node.nodeUnpublishVolume(unpublishRequest(removed));
    await metricsShow({
      [PUBLISHED]: 1,
      [abnormal("not_mounted")]: 0,
      [abnormal("target_gone")]: 0,
    });
  });

  test("the agent's directory replaced: the volume shows the old one; /readyz: no socket", async () => {
    agent.stop(true);
    renameSync(socketDir, `${socketDir}.old`);
    mkdirSync(socketDir);
    await metricsShow({
      [PUBLISHED]: 0,
      [abnormal("replaced")]: 1,
      [readiness("agent_no_socket")]: 1,
      spiffe_csi_agent_up: 0,
    });
    const stats = await node.nodeGetVolumeStats(statsRequest(kept));
    expect(stats.volumeCondition?.message).toContain("no longer shows the Workload API directory");
  });

  test("the agent's directory removed: source missing; /readyz: directory missing", async () => {
    rmdirSync(socketDir);
    await metricsShow({
      [abnormal("source_missing")]: 1,
      [abnormal("replaced")]: 0,
      [readiness("agent_directory_missing")]: 1,
      [readiness("agent_no_socket")]: 0,
    });
  });

  test("the driver's view of the directory removed: source stale; /readyz: stale directory", async () => {
    // As a hostPath does when the node's directory is removed: the driver's path still leads to
    // the removed directory.
    const backing = join(root, "backing");
    mkdirSync(backing);
    mkdirSync(socketDir);
    expect(Bun.spawnSync(["mount", "--bind", backing, socketDir]).exitCode).toBe(0);
    mounted.push(socketDir);
    rmdirSync(backing);
    await metricsShow({
      [abnormal("source_stale")]: 1,
      [abnormal("source_missing")]: 0,
      [readiness("stale_directory")]: 1,
      [readiness("agent_directory_missing")]: 0,
    });
    const ready = await fetch(`http://127.0.0.1:${port}/readyz`);
    expect(ready.status).toBe(503);
    expect(await ready.text()).toContain("the driver's mount still holds the removed one");
    await node.nodeUnpublishVolume(unpublishRequest(kept));
    await metricsShow({ [PUBLISHED]: 0, [abnormal("source_stale")]: 0 });
    node.close();
  });
});
