// File systems the driver does not own, mounted where it looks: over the agent's directory (by
// root with allow_other, or by the agent's user without it, as fusermount3 mounts), on another
// driver's volume, and over a published target (a privileged pod). Each is a FUSE server that
// stops answering (../helpers/fuse-server.ts). The driver judges every mount by what the kernel
// says of it (its unique id and file system type, or the mount table) before it asks anything of
// a directory: it refuses or counts what it cannot trust, answers at once, and stays free to
// serve every other call, its health port and SIGTERM.
import { describe, expect, test } from "bun:test";
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { status } from "@grpc/grpc-js";
import { clients, type DriverProcess, spawnDriver } from "../../helpers/driver.ts";
import { failsWithin, foreignMountsBed } from "../../helpers/foreign-mounts.ts";
import { probe } from "../../helpers/http.ts";
import {
  mountsAt,
  podVolume,
  preparedVolume,
  publishRequest,
  statsRequest,
  unpublishRequest,
} from "../../helpers/kubelet.ts";
import { freePort } from "../../helpers/port.ts";
import { PATIENCE_MS, waitFor } from "../../helpers/wait.ts";

// The agent's user, who may mount FUSE over its own directory through fusermount3.
const AGENT_UID = 1000;
// What "at once" means here: a bound for a loaded machine, not a figure. Old drivers never
// answered at all.
const WITHIN_MS = 10_000;

const bed = foreignMountsBed("foreign-mounts", { agentUid: AGENT_UID });
const { root, socketDir, kubeletRoot, running } = bed;

/** The driver with a health port, its inspections bounded by 2 s. */
async function driverWithHealth(name: string) {
  const healthPort = freePort();
  const args = ["--health-addr", `127.0.0.1:${healthPort}`, "--inspect-timeout", "2"];
  return { ...(await bed.startDriver(name, args)), healthPort };
}

/** `call`'s failure; fails the test beyond WITHIN_MS. */
const answered = (call: Promise<unknown>) => failsWithin(WITHIN_MS, call);

/** A new pod's publish through `csiSocketPath`: its failure, within WITHIN_MS. */
async function newPodPublishFailure(csiSocketPath: string) {
  const { node } = clients(csiSocketPath);
  try {
    return await answered(node.nodePublishVolume(publishRequest(preparedVolume(kubeletRoot))));
  } finally {
    node.close();
  }
}

const PUBLISHED = "spiffe_csi_published_volumes";
const abnormal = (reason: string) => `spiffe_csi_abnormal_volumes{reason="${reason}"}`;

/** Waits until /metrics shows every sample in `wanted` (answers are up to a second old). */
async function metricsShow(port: number, wanted: Record<string, number>): Promise<void> {
  let last: Record<string, number | undefined> = {};
  await waitFor(
    () => `/metrics to show ${JSON.stringify(wanted)}; last: ${JSON.stringify(last)}`,
    async () => {
      const body = (await probe(port, "/metrics", WITHIN_MS)).body;
      last = Object.fromEntries(
        Object.keys(wanted).map((series) => {
          const line = body.split("\n").find((each) => each.startsWith(`${series} `));
          return [series, line === undefined ? undefined : Number(line.slice(series.length + 1))];
        }),
      );
      return Object.entries(wanted).every(([series, value]) => last[series] === value);
    },
    PATIENCE_MS,
  );
}

/** A pod published before anything is mounted where the driver looks. */
async function publishedPod(csiSocketPath: string) {
  const { node } = clients(csiSocketPath);
  const volume = preparedVolume(kubeletRoot);
  await node.nodePublishVolume(publishRequest(volume));
  expect(mountsAt(volume.targetPath)).toBe(1);
  node.close();
  return volume;
}

describe("a silent FUSE file system mounted over the agent's directory", () => {
  test("publish is refused at once naming it; unpublish, /healthz and /readyz answer; SIGTERM ends the driver", async () => {
    const { driver, healthPort, csiSocketPath } = await driverWithHealth("over");
    const earlier = await publishedPod(csiSocketPath);
    await bed.silentFuse(socketDir);
    const { node } = clients(csiSocketPath);

    const refused = await answered(
      node.nodePublishVolume(publishRequest(preparedVolume(kubeletRoot))),
    );
    expect(refused.code).toBe(status.FAILED_PRECONDITION);
    expect(refused.details).toContain(`${socketDir} is on a fuse mount`);
    expect(refused.details).toContain("keep the agent's sockets on a local file system");

    // The pod published before goes away: unpublish never depends on the agent's directory.
    await node.nodeUnpublishVolume(unpublishRequest(earlier));
    expect(mountsAt(earlier.targetPath)).toBe(0);

    expect((await probe(healthPort, "/healthz", WITHIN_MS)).status).toBe(200);
    const readyz = await probe(healthPort, "/readyz", WITHIN_MS);
    expect(readyz.status).toBe(503);
    expect(readyz.body).toContain("fuse mount");
    node.close();

    const started = performance.now();
    const { code } = await driver.stop("SIGTERM");
    expect(performance.now() - started).toBeLessThan(WITHIN_MS);
    expect(code).toBe(0);
  });

  test("a driver started meanwhile serves, and says why it refuses", async () => {
    await bed.silentFuse(socketDir);
    const { driver, csiSocketPath } = await driverWithHealth("over-start");
    await driver.waitForLog("fuse mount");
    const refused = await newPodPublishFailure(csiSocketPath);
    expect(refused.code).toBe(status.FAILED_PRECONDITION);
  });
});

describe("the agent's user's FUSE mount over its directory, without allow_other", () => {
  test("publish is refused (not INTERNAL EACCES), unpublish removes the bind, a restart serves", async () => {
    const { healthPort, csiSocketPath } = await driverWithHealth("owned");
    const earlier = await publishedPod(csiSocketPath);
    // Answering, but to its owner alone: root's every request is EACCES.
    await bed.fuse(socketDir, { owner: AGENT_UID });
    const { node } = clients(csiSocketPath);

    const refused = await answered(
      node.nodePublishVolume(publishRequest(preparedVolume(kubeletRoot))),
    );
    expect(refused.code).toBe(status.FAILED_PRECONDITION);
    expect(refused.details).toContain(`${socketDir} is on a fuse mount`);

    await node.nodeUnpublishVolume(unpublishRequest(earlier));
    expect(mountsAt(earlier.targetPath)).toBe(0);
    const readyz = await probe(healthPort, "/readyz", WITHIN_MS);
    expect(readyz.status).toBe(503);
    expect(readyz.body).toContain("fuse mount");
    expect(readyz.body).not.toContain("internal error");
    node.close();

    // A restart (with the census, which adopts what was published) serves.
    const again = await driverWithHealth("owned-again");
    const refusedAgain = await newPodPublishFailure(again.csiSocketPath);
    expect(refusedAgain.code).toBe(status.FAILED_PRECONDITION);
  });
});

describe("a silent FUSE file system behind another driver's volume", () => {
  test("the driver with its census starts, serves and adopts its own volumes only", async () => {
    // One volume of this driver's, published by a driver since killed, to be adopted.
    const first = await driverWithHealth("adopt-first");
    const mine = await publishedPod(first.csiSocketPath);
    await (running.pop() as DriverProcess).stop("SIGKILL");
    const other = podVolume(kubeletRoot, "other-drivers-volume");
    mkdirSync(other.targetPath, { recursive: true });
    await bed.silentFuse(other.targetPath);

    const started = performance.now();
    const { healthPort, csiSocketPath } = await driverWithHealth("adopt");
    expect(performance.now() - started).toBeLessThan(WITHIN_MS);
    await metricsShow(healthPort, { [PUBLISHED]: 1, [abnormal("replaced")]: 0 });
    const { node } = clients(csiSocketPath);
    await node.nodeUnpublishVolume(unpublishRequest(mine));
    await metricsShow(healthPort, { [PUBLISHED]: 0 });
    node.close();
  });
});

describe("a silent FUSE file system over a published target (a privileged pod's)", () => {
  test("stats of it is UNAVAILABLE at once; /metrics counts it, other publishes and stats go on", async () => {
    const { healthPort, csiSocketPath } = await driverWithHealth("target");
    const hung = [await publishedPod(csiSocketPath), await publishedPod(csiSocketPath)];
    const fine = await publishedPod(csiSocketPath);
    for (const volume of hung) await bed.silentFuse(volume.targetPath);
    const { node } = clients(csiSocketPath);

    const stats = await answered(node.nodeGetVolumeStats(statsRequest(hung[0] as typeof fine)));
    expect(stats.code).toBe(status.UNAVAILABLE);
    expect(stats.details).toContain("fuse mount");

    await metricsShow(healthPort, {
      [PUBLISHED]: 1,
      [abnormal("replaced")]: 2,
      [abnormal("unresponsive")]: 0,
    });

    // Scrapes and calls together: nothing waits on the silent targets.
    const scrapes = Array.from({ length: 4 }, () => probe(healthPort, "/metrics", WITHIN_MS));
    const another = preparedVolume(kubeletRoot);
    await node.nodePublishVolume(publishRequest(another));
    const fineStats = await node.nodeGetVolumeStats(statsRequest(fine));
    expect(fineStats.volumeCondition?.abnormal).toBe(false);
    for (const scrape of await Promise.all(scrapes)) expect(scrape.status).toBe(200);
    node.close();
  });
});

describe("the agent's directory removed while a publish is under way", () => {
  test("the failed bind is UNAVAILABLE, which the kubelet retries", async () => {
    // `mount` as the node runs it, but the directory is removed just before: what root
    // removing it (the SPIRE chart's layout) in the middle of a publish does.
    const gone = join(root, "gone-agent-sockets");
    mkdirSync(gone);
    const bin = join(root, "bin");
    mkdirSync(bin);
    const realMount = Bun.which("mount") as string;
    writeFileSync(
      join(bin, "mount"),
      `#!/bin/sh\nrmdir ${JSON.stringify(gone)} 2>/dev/null\nexec ${realMount} "$@"\n`,
      { mode: 0o755 },
    );
    const csiSocketPath = join(root, "gone", "csi.sock");
    const driver = spawnDriver(
      ["-workload-api-socket-dir", gone, "-csi-socket-path", csiSocketPath],
      { MY_NODE_NAME: "node-1", PATH: `${bin}:${process.env.PATH ?? "/usr/bin:/bin"}` },
    );
    running.push(driver);
    await waitFor("the driver to serve", async () => {
      if (driver.proc.exitCode !== null) throw new Error(driver.stderr);
      const { identity } = clients(csiSocketPath);
      try {
        await identity.probe({});
        return true;
      } catch {
        return false;
      } finally {
        identity.close();
      }
    });
    const { node } = clients(csiSocketPath);
    const volume = preparedVolume(kubeletRoot);
    const failure = await answered(node.nodePublishVolume(publishRequest(volume)));
    expect(failure.code).toBe(status.UNAVAILABLE);
    expect(failure.details).toContain("No such file or directory");
    expect(mountsAt(volume.targetPath)).toBe(0);
    node.close();
  });
});
