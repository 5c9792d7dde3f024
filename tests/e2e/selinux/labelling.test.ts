// What SELinux labelling touches in the Workload API directory, and when a label it cannot set
// fails a publish: the real binary, real `security.selinux` attributes on tmpfs, a fake selinuxfs
// for the node's mode (./../helpers/selinux.ts), a FUSE file system without extended attributes,
// and SPIRE's chart layout (the directory itself bound read-only into the driver's view).
import { afterAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import {
  chmodSync,
  chownSync,
  linkSync,
  mkdirSync,
  readdirSync,
  renameSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { join } from "node:path";
import { status } from "@grpc/grpc-js";
import { getLabel, setLabel } from "../../../src/selinux/xattr.ts";
import { AGENT_SOCKET, startAgent } from "../../helpers/agent.ts";
import {
  assertPrivateMountNamespace,
  clients,
  type DriverProcess,
  tempDir,
} from "../../helpers/driver.ts";
import { FuseMount } from "../../helpers/fuse.ts";
import { probe } from "../../helpers/http.ts";
import { podVolume, prepareVolume, publishRequest, statsRequest } from "../../helpers/kubelet.ts";
import { freePort } from "../../helpers/port.ts";
import { rpcFailure } from "../../helpers/rpc.ts";
import {
  CONTAINER_FILE,
  doctorOnSelinuxNode,
  ETC_LABEL,
  HOST_LABEL,
  type SelinuxMode,
  startOnSelinuxNode,
  UNCONFINED_CONTAINER_FILE,
} from "../../helpers/selinux.ts";
import { waitFor } from "../../helpers/wait.ts";

assertPrivateMountNamespace();
// Generous for a loaded machine: covers every test and hook of this file.
setDefaultTimeout(180_000);

const root = tempDir("labelling");
const mounted: string[] = [];
const running: DriverProcess[] = [];
const stoppers: (() => unknown)[] = [];

function run(...argv: string[]): void {
  const result = Bun.spawnSync(argv, { stderr: "pipe" });
  if (result.exitCode !== 0) throw new Error(`${argv.join(" ")}: ${result.stderr.toString()}`);
}

function mount(target: string, ...argv: string[]): void {
  run("mount", ...argv, target);
  mounted.push(target);
}

// A file system that stores security.selinux, whatever /tmp is.
mount(root, "-t", "tmpfs", "labelling-test");

afterAll(async () => {
  for (const stop of stoppers) await stop();
  for (const driver of running) if (driver.proc.exitCode === null) await driver.stop("SIGKILL");
  for (const path of mounted.reverse()) Bun.spawnSync(["umount", "-l", path]);
  rmSync(root, { recursive: true, force: true });
}, 60_000);

/** A Workload API directory with the agent's socket in it, and SPIRE's link to it. */
function agentDirectory(name: string, socketDir = join(root, name, "agent-sockets")) {
  const base = join(root, name);
  mkdirSync(socketDir, { recursive: true });
  const agent = startAgent(socketDir);
  stoppers.push(() => agent.stop(true));
  symlinkSync(AGENT_SOCKET, join(socketDir, "api.sock"));
  return {
    base,
    socketDir,
    kubeletRoot: join(base, "kubelet"),
    csiSocketPath: join(base, "csi.sock"),
  };
}
type Agent = ReturnType<typeof agentDirectory>;

async function startDriver(mode: SelinuxMode, setup: Agent, args: string[] = []) {
  const healthPort = freePort();
  const driver = await startOnSelinuxNode(mode, root, {
    workloadApiSocketDir: setup.socketDir,
    csiSocketPath: setup.csiSocketPath,
    args: ["--selinux-label", "auto", "--health-addr", `127.0.0.1:${healthPort}`, ...args],
  });
  running.push(driver);
  return { driver, healthPort };
}

async function publish(setup: Agent) {
  const volume = podVolume(setup.kubeletRoot);
  prepareVolume(volume);
  const { node } = clients(setup.csiSocketPath);
  try {
    await node.nodePublishVolume(publishRequest(volume));
  } finally {
    node.close();
  }
}

async function publishFailure(setup: Agent) {
  const volume = podVolume(setup.kubeletRoot);
  prepareVolume(volume);
  const { node } = clients(setup.csiSocketPath);
  try {
    return await rpcFailure(node.nodePublishVolume(publishRequest(volume)));
  } finally {
    node.close();
  }
}

async function readyz(port: number) {
  return probe(port, "/readyz", 10_000);
}

async function labelFailures(port: number, mode: SelinuxMode): Promise<number> {
  const text = (await probe(port, "/metrics", 10_000)).body;
  const match = new RegExp(
    `^spiffe_csi_selinux_label_failures_total\\{mode="${mode}"\\} (\\d+)$`,
    "m",
  ).exec(text);
  if (!match?.[1]) throw new Error(`no label-failure counter for ${mode} in:\n${text}`);
  return Number(match[1]);
}

function labelOf(path: string): string | undefined {
  return getLabel(path);
}

describe("what labelling touches", () => {
  test("the directory, its sockets, links and the agent's own files; hard links, other owners' files and FIFOs are left alone and reported", async () => {
    const setup = agentDirectory("touches");
    const { socketDir } = setup;
    // A root-owned file anyone may write, linked into the directory by the agent's user.
    const standIn = join(setup.base, "shadow");
    writeFileSync(standIn, "root:*:1::::::\n", { mode: 0o666 });
    setLabel(standIn, ETC_LABEL);
    linkSync(standIn, join(socketDir, "shadow"));
    writeFileSync(join(socketDir, "agent.conf"), "");
    writeFileSync(join(socketDir, "foreign.conf"), "");
    chownSync(join(socketDir, "foreign.conf"), 1000, 1000);
    setLabel(join(socketDir, "foreign.conf"), HOST_LABEL);
    run("mkfifo", join(socketDir, "fifo"));
    setLabel(join(socketDir, "fifo"), HOST_LABEL);
    mkdirSync(join(socketDir, "private"));
    writeFileSync(join(socketDir, "private", "below"), "");
    // What the link points to is not the link's to give.
    const outside = join(setup.base, "outside");
    writeFileSync(outside, "");
    setLabel(outside, HOST_LABEL);
    symlinkSync(outside, join(socketDir, "socket"));

    const { driver, healthPort } = await startDriver("enforcing", setup);
    await publish(setup);
    const labels = Object.fromEntries(
      [".", ...readdirSync(socketDir).sort()].map((name) => [name, labelOf(join(socketDir, name))]),
    );
    expect(labels).toEqual({
      ".": CONTAINER_FILE,
      [AGENT_SOCKET]: CONTAINER_FILE,
      "agent.conf": CONTAINER_FILE,
      "api.sock": CONTAINER_FILE,
      fifo: HOST_LABEL,
      "foreign.conf": HOST_LABEL,
      private: CONTAINER_FILE,
      shadow: ETC_LABEL,
      socket: CONTAINER_FILE,
    });
    expect(labelOf(standIn)).toBe(ETC_LABEL);
    expect(labelOf(outside)).toBe(HOST_LABEL);
    expect(labelOf(join(socketDir, "private", "below"))).toBeUndefined();

    // Reported: in the log, on /readyz, and by the doctor.
    await waitFor("the log to report what was left alone", () =>
      driver.stderr.includes("left alone"),
    );
    expect(driver.stderr).toContain("shadow");
    expect(driver.stderr).toContain("a hard link (2 names)");
    expect(driver.stderr).toContain("owned by uid 1000");
    const ready = await waitFor("/readyz to note what was left alone", async () => {
      const answer = await readyz(healthPort);
      return answer.body.includes("left alone") && answer;
    });
    expect(ready.status).toBe(200);
    const { checks } = await doctorOnSelinuxNode("enforcing", root, [
      "-workload-api-socket-dir",
      socketDir,
    ]);
    const usable = checks.find((check) => check.name.includes("labelled for containers"));
    expect(usable?.ok).toBe(true);
    const leftAlone = checks.find((check) => check.name.includes("only what the driver labels"));
    expect(leftAlone?.ok).toBe(false);
    expect(leftAlone?.detail).toContain(`${join(socketDir, "shadow")}: a hard link`);
    expect(leftAlone?.detail).toContain(`${join(socketDir, "fifo")}: neither a socket`);
  });

  test("a directory its group may write to (0775 root:agent): the agent's socket is labelled whoever owns it; a root-only file moved in is left alone", async () => {
    const setup = agentDirectory("group-writable");
    const { socketDir } = setup;
    chownSync(socketDir, 0, 1000);
    chmodSync(socketDir, 0o775);
    // The agent, run as uid 1000, made its socket; then moved in a root-only file of its home.
    chownSync(join(socketDir, AGENT_SOCKET), 1000, 1000);
    const secret = join(setup.base, "secret");
    writeFileSync(secret, "key", { mode: 0o600 });
    setLabel(secret, ETC_LABEL);
    renameSync(secret, join(socketDir, "moved-in"));

    const { driver } = await startDriver("enforcing", setup);
    await publish(setup);
    expect(labelOf(join(socketDir, AGENT_SOCKET))).toBe(CONTAINER_FILE);
    expect(labelOf(join(socketDir, "moved-in"))).toBe(ETC_LABEL);
    await waitFor("the log to report what was left alone", () =>
      driver.stderr.includes("may write to (mode 0775)"),
    );
  });

  test("an entry re-created again and again while volumes are published: every publish succeeds, and what is there at the end is labelled", async () => {
    const setup = agentDirectory("re-created");
    const { socketDir } = setup;
    writeFileSync(join(socketDir, "agent.conf"), "");
    await startDriver("enforcing", setup);
    // The agent rewrites its configuration (a new file renamed over the old) and re-creates a
    // link, as fast as it can, in a process of its own. Told to stop, it ends after a whole
    // round, with both in place.
    const stop = join(setup.base, "stop-churn");
    const churn = Bun.spawn(
      [
        process.execPath,
        "-e",
        `const fs = require("node:fs");
         const [dir, stop] = process.argv.slice(1);
         for (let i = 0; !fs.existsSync(stop); i++) {
           fs.writeFileSync(dir + "/.agent.conf.new", String(i));
           fs.renameSync(dir + "/.agent.conf.new", dir + "/agent.conf");
           fs.rmSync(dir + "/link", { force: true });
           fs.symlinkSync("agent.conf", dir + "/link");
         }`,
        socketDir,
        stop,
      ],
      { stdout: "ignore", stderr: "pipe" },
    );
    stoppers.push(() => churn.kill());
    const failures: string[] = [];
    for (let round = 0; round < 50; round++) {
      const results = await Promise.allSettled([publish(setup), publish(setup), publish(setup)]);
      for (const result of results) {
        if (result.status === "rejected") failures.push((result.reason as Error).message);
      }
    }
    writeFileSync(stop, "");
    expect(await churn.exited).toBe(0);
    expect(failures).toEqual([]);
    await publish(setup);
    expect(labelOf(join(socketDir, "agent.conf"))).toBe(CONTAINER_FILE);
    expect(labelOf(join(socketDir, "link"))).toBe(CONTAINER_FILE);
  });
});

describe("file systems mounted in the directory, with --recursive-bind", () => {
  test("a read-only FUSE file system without labels: enforcing refuses with the fix, permissive publishes and says so; neither relabels it", async () => {
    const setup = agentDirectory("fuse-no-xattr");
    const spiffefs = join(setup.socketDir, "spiffefs");
    mkdirSync(spiffefs);
    const fuse = await FuseMount.start(spiffefs, { readOnly: true, noXattrs: true });
    stoppers.push(() => fuse.stop());
    const { driver, healthPort } = await startDriver("enforcing", setup, ["--recursive-bind"]);

    const refused = await publishFailure(setup);
    expect(refused.code).toBe(status.FAILED_PRECONDITION);
    expect(refused.details).toContain(`"${spiffefs}"`);
    expect(refused.details).toContain("ENOTSUP");
    expect(refused.details).toContain("context=");
    expect((await readyz(healthPort)).status).toBe(503);
    expect(await labelFailures(healthPort, "enforcing")).toBeGreaterThan(0);
    await driver.stop();

    const permissive = await startDriver("permissive", setup, ["--recursive-bind"]);
    await publish(setup);
    await publish(setup);
    expect(permissive.driver.stderr).toContain("permissive");
    expect(permissive.driver.stderr).toContain(spiffefs);
    expect(await labelFailures(permissive.healthPort, "permissive")).toBeGreaterThan(0);
    const ready = await waitFor("/readyz to note the unusable label", async () => {
      const answer = await readyz(permissive.healthPort);
      return answer.body.includes(spiffefs) && answer;
    });
    expect(ready.status).toBe(200);
    // Read, never set.
    const counts = await fuse.counts();
    expect(counts["21"]).toBeUndefined();
    expect(counts["22"]).toBeGreaterThan(0);
  });

  test("a read-only file system labelled for containers publishes on an enforcing node, its label kept", async () => {
    const setup = agentDirectory("ro-labelled");
    const spiffefs = join(setup.socketDir, "spiffefs");
    mkdirSync(spiffefs);
    mount(spiffefs, "-t", "tmpfs", "-o", "size=64k", "spiffefs");
    setLabel(spiffefs, UNCONFINED_CONTAINER_FILE);
    writeFileSync(join(spiffefs, "svid"), "");
    run("mount", "-o", "remount,ro", spiffefs);
    await startDriver("enforcing", setup, ["--recursive-bind"]);
    await publish(setup);
    expect(labelOf(spiffefs)).toBe(UNCONFINED_CONTAINER_FILE);

    run("mount", "-o", "remount,rw", spiffefs);
    setLabel(spiffefs, HOST_LABEL);
    run("mount", "-o", "remount,ro", spiffefs);
    const refused = await publishFailure(setup);
    expect(refused.code).toBe(status.FAILED_PRECONDITION);
    expect(refused.details).toContain(`"${spiffefs}"`);
    expect(labelOf(spiffefs)).toBe(HOST_LABEL);
  });
});

describe("SPIRE's chart layout: the agent's directory itself, bound read-only into the driver's view", () => {
  // The node: a file system whose /run/spire/agent-sockets is the hostPath. The driver's view:
  // that directory bound read-only at /spire-agent-socket, as the chart's volumeMount does.
  function chartLayout(name: string) {
    const node = join(root, name, "node");
    mkdirSync(node, { recursive: true });
    mount(node, "-t", "tmpfs", "node-root");
    const hostPath = join(node, "run", "spire", "agent-sockets");
    const setup = agentDirectory(name, hostPath);
    const view = join(root, name, "driver", "spire-agent-socket");
    mkdirSync(view, { recursive: true });
    mount(view, "--bind", hostPath);
    run("mount", "-o", "remount,bind,ro", view);
    return { ...setup, socketDir: view, hostPath };
  }

  test("permissive, unlabelled: publishes, with a warning, a counter and a /readyz note", async () => {
    const setup = chartLayout("chart-permissive");
    const { driver, healthPort } = await startDriver("permissive", setup);
    await publish(setup);
    expect(labelOf(`${setup.hostPath}/.`)).toBeUndefined();
    expect(driver.stderr).toContain("permissive");
    expect(await labelFailures(healthPort, "permissive")).toBeGreaterThan(0);
    const ready = await waitFor("/readyz to note the missing labels", async () => {
      const answer = await readyz(healthPort);
      return answer.body.includes("EROFS") && answer;
    });
    expect(ready.status).toBe(200);
  });

  test("enforcing, unlabelled: FAILED_PRECONDITION naming the hostPath to label and the deployment fix", async () => {
    const setup = chartLayout("chart-enforcing");
    await startDriver("enforcing", setup);
    const refused = await publishFailure(setup);
    expect(refused.code).toBe(status.FAILED_PRECONDITION);
    expect(refused.details).toContain("EROFS");
    // The directory's path on the node, from the mount table's root field.
    expect(refused.details).toContain('"/run/spire/agent-sockets"');
    expect(refused.details).toContain("chcon -h -t container_file_t /run/spire/agent-sockets");
    expect(refused.details).toContain("mount the directory's parent read-write");
  });

  test("enforcing, labelled unconfined_u:object_r:container_file_t:s0 (the chart's chcon -t): publishes, the doctor agrees", async () => {
    const setup = chartLayout("chart-chcon");
    setLabel(`${setup.hostPath}/.`, UNCONFINED_CONTAINER_FILE);
    setLabel(join(setup.hostPath, AGENT_SOCKET), UNCONFINED_CONTAINER_FILE);
    setLabel(join(setup.hostPath, "api.sock"), UNCONFINED_CONTAINER_FILE);
    await startDriver("enforcing", setup);
    await publish(setup);
    expect(labelOf(`${setup.hostPath}/.`)).toBe(UNCONFINED_CONTAINER_FILE);
    const { checks } = await doctorOnSelinuxNode("enforcing", root, [
      "-workload-api-socket-dir",
      setup.socketDir,
    ]);
    expect(checks.find((check) => check.name.includes("labelled for containers"))?.ok).toBe(true);
  });
});

/** An agent's directory with a read-only FUSE file system mounted in it, as SPIFFEFS is. */
async function withFuse(name: string) {
  const setup = agentDirectory(name);
  const spiffefs = join(setup.socketDir, "spiffefs");
  mkdirSync(spiffefs);
  const fuse = await FuseMount.start(spiffefs, { readOnly: true });
  stoppers.push(() => fuse.stop());
  return { setup, spiffefs, fuse };
}

describe("a file system in the directory that stops answering, with --recursive-bind", () => {
  test("publishes that label answer UNAVAILABLE; a published volume's stats still answer; SIGTERM stops the driver and names the checks left stuck in the kernel", async () => {
    const { setup, spiffefs, fuse } = await withFuse("stuck");
    const { driver } = await startDriver("permissive", setup, [
      "--recursive-bind",
      "--inspect-timeout",
      "1",
    ]);
    const volume = podVolume(setup.kubeletRoot);
    prepareVolume(volume);
    const { node } = clients(setup.csiSocketPath);
    await node.nodePublishVolume(publishRequest(volume));

    await fuse.hang();
    // Each change makes the next publish survey the directory, and read the file system's label.
    for (let round = 0; round < 3; round++) {
      writeFileSync(join(setup.socketDir, `change-${round}`), "");
      const failure = await publishFailure(setup);
      expect(failure.code).toBe(status.UNAVAILABLE);
      expect(failure.details).toContain(spiffefs);
    }
    // The stuck checks were about the directory's labels, not about the volume.
    const stats = await node.nodeGetVolumeStats(statsRequest(volume));
    expect(stats.volumeCondition).toMatchObject({ abnormal: false });
    node.close();

    const { code, stderr } = await driver.stop();
    expect(code).toBe(0);
    expect(stderr).toContain("checks stuck in the kernel outlive the driver");
    expect(stderr).toMatch(new RegExp(`pid \\d+ \\(D [^)]*\\) at [^"]*${spiffefs}`));
    await fuse.answer();
  });
});

describe("concurrent publishes", () => {
  test("share the labelling work: a burst of publishes surveys the directory once or twice, not once each", async () => {
    // With --recursive-bind every survey reads the label of what is mounted in the directory:
    // the FUSE server counts the surveys.
    const { setup, fuse } = await withFuse("shared");
    for (let index = 0; index < 10_000; index++) {
      writeFileSync(join(setup.socketDir, `entry-${index}`), "");
    }
    await startDriver("permissive", setup, ["--recursive-bind"]);
    await publish(setup);
    const surveys = async () => (await fuse.counts())["22"] ?? 0;
    const before = await surveys();
    // A change: the directory is surveyed again, not answered from the last survey.
    writeFileSync(join(setup.socketDir, "agent.conf"), "");
    const burst = 16;
    await Promise.all(Array.from({ length: burst }, () => publish(setup)));
    const surveyed = (await surveys()) - before;
    expect(surveyed).toBeGreaterThan(0);
    // One running when the burst came, one shared by the rest; a straggler may make a third.
    expect(surveyed).toBeLessThanOrEqual(3);
    expect(labelOf(join(setup.socketDir, "agent.conf"))).toBe(CONTAINER_FILE);
  });
});

describe("many entries", () => {
  for (const count of [10_000, 100_000]) {
    test(`${count.toLocaleString("en")} entries: labelled once, publishes succeed, /healthz answers meanwhile`, async () => {
      const setup = agentDirectory(`entries-${count}`);
      const { healthPort } = await startDriver("enforcing", setup);
      for (let index = 0; index < count; index++) {
        writeFileSync(join(setup.socketDir, `entry-${index}`), "");
      }
      let probing = true;
      const probes = (async () => {
        let answered = 0;
        for (; probing; answered++) {
          expect((await probe(healthPort, "/healthz", 10_000)).status).toBe(200);
        }
        return answered;
      })();
      await publish(setup);
      await publish(setup);
      probing = false;
      expect(await probes).toBeGreaterThan(0);
      const unlabelled = readdirSync(setup.socketDir).filter(
        (name) =>
          name.startsWith("entry-") && labelOf(join(setup.socketDir, name)) !== CONTAINER_FILE,
      );
      expect(unlabelled).toEqual([]);
      expect(labelOf(`${setup.socketDir}/.`)).toBe(CONTAINER_FILE);
    });
  }
});
