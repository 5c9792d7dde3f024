// A file system in the Workload API directory that stops answering (a FUSE server that reads
// requests and answers none, ../helpers/fuse-server.ts): the driver's calls into the directory
// run in a child process with a deadline, so the call that needs the file system answers
// UNAVAILABLE within seconds and nothing else waits: not /healthz, not other calls, not SIGTERM.
import { beforeAll, describe, expect, test } from "bun:test";
import { mkdirSync, readdirSync, readFileSync, symlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { status } from "@grpc/grpc-js";
import { AGENT_SOCKET } from "../../helpers/agent.ts";
import { BINARY, clients, type DriverProcess } from "../../helpers/driver.ts";
import { foreignMountsBed } from "../../helpers/foreign-mounts.ts";
import type { FuseMount } from "../../helpers/fuse.ts";
import { probe } from "../../helpers/http.ts";
import { preparedVolume, publishRequest, unpublishRequest } from "../../helpers/kubelet.ts";
import { freePort } from "../../helpers/port.ts";
import { rpcFailure } from "../../helpers/rpc.ts";
import { selinuxInputs, startOnSelinuxNode } from "../../helpers/selinux.ts";
import { waitFor } from "../../helpers/wait.ts";

// How long the driver lets a check into the directory stay silent (--inspect-timeout).
const TIMEOUT_S = 2;
// What "within seconds" means here: a bound for a loaded machine, not a figure.
const WITHIN_MS = 10_000;

const bed = foreignMountsBed("hung", { stopAfterEach: false });
const { root, socketDir, kubeletRoot, running } = bed;
const spiffefs = join(socketDir, "spiffefs");
let fuse: FuseMount;

mkdirSync(spiffefs);
symlinkSync(AGENT_SOCKET, join(socketDir, "api.sock"));

beforeAll(async () => {
  // Hung before the driver ever asks: nothing of it is cached in the kernel.
  fuse = await bed.silentFuse(spiffefs, { readOnly: true });
}, 60_000);

/** The driver on a permissive node, labelling, with `args`; its health port. */
async function startDriver(name: string, args: string[]) {
  const healthPort = freePort();
  const csiSocketPath = join(root, name, "csi.sock");
  const driver = await startOnSelinuxNode("permissive", root, {
    workloadApiSocketDir: socketDir,
    csiSocketPath,
    args: [
      "--selinux-label",
      "on",
      "--inspect-timeout",
      String(TIMEOUT_S),
      "--health-addr",
      `127.0.0.1:${healthPort}`,
      ...args,
    ],
  });
  running.push(driver);
  return { driver, healthPort, csiSocketPath };
}

/** The processes whose parent is `pid`. */
function childrenOf(pid: number): number[] {
  return readdirSync("/proc")
    .filter((name) => /^\d+$/.test(name))
    .filter((name) => {
      try {
        const stat = readFileSync(`/proc/${name}/stat`, "utf8");
        return Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]) === pid;
      } catch {
        return false;
      }
    })
    .map(Number);
}

describe("--recursive-bind, labelling: pods would see the hung file system", () => {
  let driver: DriverProcess;
  let healthPort: number;
  let csiSocketPath: string;
  beforeAll(async () => {
    ({ driver, healthPort, csiSocketPath } = await startDriver("recursive", ["--recursive-bind"]));
  }, 60_000);

  test("a publish answers UNAVAILABLE within seconds, naming the file system; /healthz, Probe and other calls answer meanwhile", async () => {
    const { node, identity } = clients(csiSocketPath);
    const started = performance.now();
    const publishing = rpcFailure(
      node.nodePublishVolume(publishRequest(preparedVolume(kubeletRoot))),
    );
    let answeredWhile = 0;
    let done = false;
    void publishing.finally(() => {
      done = true;
    });
    while (!done) {
      const healthz = await probe(healthPort, "/healthz", WITHIN_MS);
      expect(healthz.status).toBe(200);
      expect(await identity.probe({})).toMatchObject({});
      await node.nodeGetCapabilities({});
      // Another volume's unpublish: never published, so OK at once.
      const other = preparedVolume(kubeletRoot);
      await node.nodeUnpublishVolume(unpublishRequest(other));
      answeredWhile++;
    }
    const failure = await publishing;
    expect(performance.now() - started).toBeLessThan(WITHIN_MS);
    expect(answeredWhile).toBeGreaterThan(0);
    expect(failure.code).toBe(status.UNAVAILABLE);
    expect(failure.details).toContain(spiffefs);
    expect(failure.details).toMatch(/no answer within 2 s|still stuck/);

    // More publishes: each answers at once or within the timeout, and the processes left
    // stuck in the kernel stay bounded.
    for (let round = 0; round < 4; round++) {
      const again = performance.now();
      const next = await rpcFailure(
        node.nodePublishVolume(publishRequest(preparedVolume(kubeletRoot))),
      );
      expect(next.code).toBe(status.UNAVAILABLE);
      expect(performance.now() - again).toBeLessThan(WITHIN_MS);
    }
    expect(childrenOf(driver.proc.pid).length).toBeLessThanOrEqual(3);
    const readyz = await probe(healthPort, "/readyz", WITHIN_MS);
    expect(readyz.status).toBe(503);
    expect(readyz.body).toContain(spiffefs);
    node.close();
    identity.close();
  });

  test("the doctor times the hung check out and says so", async () => {
    const started = performance.now();
    const proc = Bun.spawn(
      [
        ...selinuxInputs(root, "1", ""),
        BINARY,
        "doctor",
        "-workload-api-socket-dir",
        socketDir,
        "--recursive-bind",
        "--inspect-timeout",
        String(TIMEOUT_S),
        "--json",
      ],
      { stdout: "pipe", stderr: "pipe", env: { PATH: process.env.PATH ?? "/usr/bin:/bin" } },
    );
    const [stdout, code] = await Promise.all([new Response(proc.stdout).text(), proc.exited]);
    expect(performance.now() - started).toBeLessThan(WITHIN_MS + 5_000);
    expect(code).toBe(1);
    const checks = JSON.parse(stdout) as { name: string; ok: boolean; detail: string }[];
    const label = checks.find((check) => check.name.includes("labelled for containers"));
    expect(label?.ok).toBe(false);
    expect(label?.detail).toContain(`no answer within ${TIMEOUT_S} s`);
    expect(label?.detail).toContain(spiffefs);
    // The other checks still ran.
    expect(checks.find((check) => check.name === "mount is on PATH")?.ok).toBe(true);
  });

  test("once the file system answers again, the stuck checks end and publishing works", async () => {
    await fuse.answer();
    const { node } = clients(csiSocketPath);
    await waitFor("a publish to succeed", async () => {
      try {
        await node.nodePublishVolume(publishRequest(preparedVolume(kubeletRoot)));
        return true;
      } catch (error) {
        // Until the stuck checks end, new ones are not started.
        expect((error as { code: number }).code).toBe(status.UNAVAILABLE);
        return false;
      }
    });
    node.close();
    await fuse.hang();
  });

  test("SIGTERM while a publish hangs: the driver stops within seconds", async () => {
    const { node } = clients(csiSocketPath);
    const asked = (await fuse.counts())["22"] ?? 0;
    // A change in the directory: the next check reads it again, the file system's label too.
    writeFileSync(join(socketDir, "agent.conf"), "");
    const publishing = node
      .nodePublishVolume(publishRequest(preparedVolume(kubeletRoot)))
      .catch(() => {});
    // The publish's check is now waiting on the file system.
    await waitFor("the check to reach the file system", async () => {
      return ((await fuse.counts())["22"] ?? 0) > asked;
    });
    const started = performance.now();
    const { code, stderr } = await driver.stop("SIGTERM");
    expect(performance.now() - started).toBeLessThan(WITHIN_MS);
    expect(code).toBe(0);
    expect(stderr).toContain("stopped");
    await publishing;
    node.close();
  });
});

describe("without --recursive-bind: pods never see the hung file system, and the driver never touches it", () => {
  test("publishes succeed and /readyz is ready while it hangs", async () => {
    const { healthPort, csiSocketPath } = await startDriver("plain", []);
    const { node } = clients(csiSocketPath);
    await node.nodePublishVolume(publishRequest(preparedVolume(kubeletRoot)));
    await node.nodePublishVolume(publishRequest(preparedVolume(kubeletRoot)));
    node.close();
    const readyz = await waitFor("/readyz to answer 200", async () => {
      const answer = await probe(healthPort, "/readyz", WITHIN_MS);
      return answer.status === 200 && answer;
    });
    expect(readyz.body).toContain(AGENT_SOCKET);
  });
});
