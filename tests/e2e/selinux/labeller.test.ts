// SELinux labels on the Workload API directory: the real binary sets the real `security.selinux`
// attribute (the kernel stores it on tmpfs even without a policy loaded), read back here with
// lgetxattr. Everything runs inside a private mount namespace, on a tmpfs mounted for the file.
import { describe, expect, test } from "bun:test";
import { mkdirSync, readdirSync, rmdirSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { status } from "@grpc/grpc-js";
import type { Check } from "../../../src/cli/doctor-checks.ts";
import { getLabel, setLabel } from "../../../src/selinux/xattr.ts";
import { AGENT_SOCKET, startAgent, talkToAgent } from "../../helpers/agent.ts";
import { clients, runBinary } from "../../helpers/driver.ts";
import { type PodVolume, publishRequest, unpublishRequest } from "../../helpers/kubelet.ts";
import { freePort } from "../../helpers/port.ts";
import { rpcFailure } from "../../helpers/rpc.ts";
import {
  CONTAINER_FILE,
  HOST_LABEL,
  selinuxInputs,
  UNCONFINED_CONTAINER_FILE,
} from "../../helpers/selinux.ts";
import { mountTestbed } from "../../helpers/testbed.ts";
import { waitFor } from "../../helpers/wait.ts";

const bed = mountTestbed("selinux", { agent: false });
const { root } = bed;
const mounted: string[] = [];
const agents: ReturnType<typeof startAgent>[] = [];

function run(argv: string[]): void {
  const result = Bun.spawnSync(argv, { stderr: "pipe" });
  if (result.exitCode !== 0) throw new Error(`${argv.join(" ")}: ${result.stderr.toString()}`);
}

function mount(argv: string[], target: string): void {
  run(["mount", ...argv, target]);
  mounted.push(target);
}

// A file system that stores security.selinux, whatever /tmp is. The testbed's own directories
// are made again on it.
mount(["-t", "tmpfs", "selinux-test"], root);
bed.beforeCleanup(async () => {
  for (const agent of agents) agent.stop(true);
  for (const driver of drivers) await driver.stop();
  for (const path of mounted.reverse()) Bun.spawnSync(["umount", "-l", path]);
});
const drivers: Awaited<ReturnType<typeof bed.start>>[] = [];

/** A driver on `setup`'s directories, stopped before the file systems go at the end. */
async function startOn(setup: Agent, args: string[], prefix: string[] = []) {
  const driver = await bed.start(args, {
    workloadApiSocketDir: setup.socketDir,
    csiSocketPath: setup.csiSocketPath,
    prefix,
  });
  drivers.push(driver);
  return driver;
}

/** An agent's directory as SPIRE lays it out, plus a subdirectory and a link leading out of it. */
function agentDirectory(name: string) {
  const base = join(root, name);
  const socketDir = join(base, "agent-sockets");
  mkdirSync(socketDir, { recursive: true });
  const agent = startAgent(socketDir);
  agents.push(agent);
  // SPIRE's links to its socket; one leading out of the directory must not be followed.
  symlinkSync(AGENT_SOCKET, join(socketDir, "api.sock"));
  const outside = join(base, "outside");
  writeFileSync(outside, "");
  setLabel(outside, HOST_LABEL);
  symlinkSync(outside, join(socketDir, "socket"));
  mkdirSync(join(socketDir, "private"));
  writeFileSync(join(socketDir, "private", "below"), "");
  return {
    socketDir,
    agent,
    outside,
    csiSocketPath: join(base, "plugin", "csi.sock"),
  };
}

type Agent = ReturnType<typeof agentDirectory>;

/** Labels of the directory and of every entry directly in it. */
function labels(socketDir: string): Record<string, string | undefined> {
  const result: Record<string, string | undefined> = { ".": getLabel(`${socketDir}/.`) };
  for (const name of readdirSync(socketDir).sort()) result[name] = getLabel(join(socketDir, name));
  return result;
}

function allLabelled(socketDir: string): Record<string, string> {
  return Object.fromEntries(Object.keys(labels(socketDir)).map((name) => [name, CONTAINER_FILE]));
}

async function publish(setup: Agent, csiSocketPath = setup.csiSocketPath) {
  const volume = bed.volume();
  const { node } = clients(csiSocketPath);
  try {
    await node.nodePublishVolume(publishRequest(volume));
  } finally {
    node.close();
  }
  return volume;
}

async function unpublish(csiSocketPath: string, volume: PodVolume) {
  const { node } = clients(csiSocketPath);
  try {
    await node.nodeUnpublishVolume(unpublishRequest(volume));
  } finally {
    node.close();
  }
}

describe("--selinux-label on", async () => {
  const setup = agentDirectory("on");
  await startOn(setup, ["--selinux-label", "on"]);

  test("labels the directory and every entry in it, links themselves, nothing below or beyond", async () => {
    const volume = await publish(setup);
    expect(labels(setup.socketDir)).toEqual({
      ".": CONTAINER_FILE,
      [AGENT_SOCKET]: CONTAINER_FILE,
      "api.sock": CONTAINER_FILE,
      private: CONTAINER_FILE,
      socket: CONTAINER_FILE,
    });
    expect(getLabel(join(setup.socketDir, "private", "below"))).toBeUndefined();
    expect(getLabel(setup.outside)).toBe(HOST_LABEL);
    expect(await talkToAgent(volume.targetPath)).toBe("pong ping");
    await unpublish(setup.csiSocketPath, volume);
  }, 60_000);

  test("labels again after the agent re-creates its directory and its socket", async () => {
    setup.agent.stop(true);
    for (const name of readdirSync(setup.socketDir)) {
      rmSync(join(setup.socketDir, name), { recursive: name === "private", force: true });
    }
    rmdirSync(setup.socketDir);
    mkdirSync(setup.socketDir);
    setup.agent = startAgent(setup.socketDir);
    agents.push(setup.agent);
    expect(labels(setup.socketDir)).toEqual({ ".": undefined, [AGENT_SOCKET]: undefined });

    const volume = await publish(setup);
    expect(labels(setup.socketDir)).toEqual({
      ".": CONTAINER_FILE,
      [AGENT_SOCKET]: CONTAINER_FILE,
    });
    expect(await talkToAgent(volume.targetPath)).toBe("pong ping");

    // Only the socket re-created, in the same directory: the next publish labels it.
    setup.agent.stop(true);
    setup.agent = startAgent(setup.socketDir);
    agents.push(setup.agent);
    expect(getLabel(join(setup.socketDir, AGENT_SOCKET))).toBeUndefined();
    const second = await publish(setup);
    expect(labels(setup.socketDir)).toEqual({
      ".": CONTAINER_FILE,
      [AGENT_SOCKET]: CONTAINER_FILE,
    });
    await unpublish(setup.csiSocketPath, volume);
    await unpublish(setup.csiSocketPath, second);
  }, 60_000);
});

describe("--selinux-label off", () => {
  test("leaves every label exactly as it was", async () => {
    const setup = agentDirectory("off");
    setLabel(`${setup.socketDir}/.`, HOST_LABEL);
    setLabel(join(setup.socketDir, AGENT_SOCKET), "unconfined_u:object_r:var_run_t:s0:c1,c2");
    const before = labels(setup.socketDir);
    expect(before["api.sock"]).toBeUndefined();
    await startOn(setup, ["--selinux-label", "off"]);
    const volume = await publish(setup);
    expect(labels(setup.socketDir)).toEqual(before);
    expect(before["."]).toBe(HOST_LABEL);
    await unpublish(setup.csiSocketPath, volume);
  }, 60_000);
});

describe("a read-only directory", () => {
  test("answers FAILED_PRECONDITION and /readyz 503 with the fix, keeps serving, labels once writable; labelled, read-only is enough", async () => {
    const setup = agentDirectory("read-only");
    mount(["--bind", setup.socketDir], setup.socketDir);
    run(["mount", "-o", "remount,bind,ro", setup.socketDir]);
    const healthPort = freePort();
    const driver = await startOn(setup, [
      "--selinux-label",
      "on",
      "--health-addr",
      `127.0.0.1:${healthPort}`,
    ]);
    // Start-up labelling is not fatal: it is logged.
    await waitFor("the start-up labelling to be logged", () =>
      driver.stderr.includes("not usable by containers"),
    );

    const volume = bed.volume();
    const { node, identity } = clients(setup.csiSocketPath);
    const failure = await rpcFailure(node.nodePublishVolume(publishRequest(volume)));
    expect(failure.code).toBe(status.FAILED_PRECONDITION);
    expect(failure.details).toContain(`"${setup.socketDir}"`);
    expect(failure.details).toContain("EROFS");
    expect(failure.details).toContain("mount the directory's parent read-write");
    expect(failure.details).toContain("chcon -h -t container_file_t");
    const readyz = await fetch(`http://127.0.0.1:${healthPort}/readyz`);
    expect(readyz.status).toBe(503);
    expect(await readyz.text()).toContain("EROFS");

    expect(await identity.probe({})).toMatchObject({});
    run(["mount", "-o", "remount,bind,rw", setup.socketDir]);
    await node.nodePublishVolume(publishRequest(volume));
    expect(labels(setup.socketDir)).toEqual(allLabelled(setup.socketDir));
    expect(await talkToAgent(volume.targetPath)).toBe("pong ping");
    // /readyz computes its answer at most once a second: the 503 above may be served a moment
    // longer.
    const readyzStatus = async () => (await fetch(`http://127.0.0.1:${healthPort}/readyz`)).status;
    await waitFor("/readyz to answer 200", async () => (await readyzStatus()) === 200);

    // A socket the agent re-creates while pods run: /readyz labels it, within its interval.
    setup.agent.stop(true);
    setup.agent = startAgent(setup.socketDir);
    agents.push(setup.agent);
    expect(getLabel(join(setup.socketDir, AGENT_SOCKET))).toBeUndefined();
    await waitFor("/readyz to label the new socket", async () => {
      expect(await readyzStatus()).toBe(200);
      return getLabel(join(setup.socketDir, AGENT_SOCKET)) === CONTAINER_FILE;
    });

    // Labelled already: read-only is enough, the labels are only read.
    run(["mount", "-o", "remount,bind,ro", setup.socketDir]);
    const second = bed.volume();
    await node.nodePublishVolume(publishRequest(second));
    expect(await talkToAgent(second.targetPath)).toBe("pong ping");
    await node.nodeUnpublishVolume(unpublishRequest(second));
    await node.nodeUnpublishVolume(unpublishRequest(volume));
    node.close();
    identity.close();
  }, 60_000);
});

describe("--selinux-label auto", () => {
  const cases: [string, string, string, boolean][] = [
    ["selinuxfs says enforcing", "1", "", true],
    ["selinuxfs says permissive", "0", "", true],
    [
      "no selinuxfs (a container), an SELinux process context",
      "",
      "system_u:system_r:spc_t:s0",
      true,
    ],
    ["no selinuxfs, an AppArmor label", "", "cri-containerd.apparmor.d (enforce)", false],
    ["no selinuxfs, no label", "", "", false],
  ];
  for (const [name, enforce, current, labelled] of cases) {
    test(`${name}: ${labelled ? "labels" : "labels nothing"}`, async () => {
      const setup = agentDirectory(`auto-${name.replace(/\W+/g, "-")}`);
      const before = labels(setup.socketDir);
      const driver = await startOn(setup, [], selinuxInputs(root, enforce, current));
      // The publish's mount stays in the driver's namespace; the labels are what matter here.
      const volume = await publish(setup);
      expect(labels(setup.socketDir)).toEqual(labelled ? allLabelled(setup.socketDir) : before);
      expect(driver.stderr).toContain(labelled ? "SELinux labelling on" : "SELinux labelling off");
      await unpublish(setup.csiSocketPath, volume);
    }, 60_000);
  }
});

describe("settings", () => {
  test.each([
    ["--selinux-context", "container_file_t", "--selinux-context must be user:role:type:level"],
    ["-selinux-context", "system_u:object_r:container_file_t", "user:role:type:level"],
    ["--selinux-label", "always", "--selinux-label must be one of auto, on, off"],
  ])(
    "%s %s exits 2 before serving",
    async (flag, value, message) => {
      const csiSocketPath = join(root, "settings", "csi.sock");
      const { code, stderr } = await runBinary(
        ["-workload-api-socket-dir", root, "-csi-socket-path", csiSocketPath, flag, value],
        { MY_NODE_NAME: "node-1" },
      );
      expect(code).toBe(2);
      expect(stderr).toContain(message);
    },
    60_000,
  );
});

describe("doctor", () => {
  async function labelCheck(prefix: string[], socketDir: string) {
    const argv = ["doctor", "-workload-api-socket-dir", socketDir, "--json"];
    const checks = JSON.parse((await runBinary(argv, {}, prefix)).stdout) as Check[];
    return checks.find((check) => check.name.includes("(SELinux)"));
  }

  test("prints the directory's and the socket's labels, and fails on an SELinux node until they suit containers", async () => {
    const setup = agentDirectory("doctor");
    const socket = join(setup.socketDir, AGENT_SOCKET);
    setLabel(`${setup.socketDir}/.`, HOST_LABEL);
    const enforcing = selinuxInputs(root, "1", "");

    const unlabelled = await labelCheck(enforcing, setup.socketDir);
    expect(unlabelled?.ok).toBe(false);
    expect(unlabelled?.detail).toContain(`${setup.socketDir} ${HOST_LABEL}`);
    expect(unlabelled?.detail).toContain(`${socket} unlabelled`);
    expect(unlabelled?.fix).toContain(`chcon -h -t container_file_t ${setup.socketDir}`);
    expect(unlabelled?.fix).toContain("ls -Z");

    // A label with categories admits only pods holding them.
    setLabel(`${setup.socketDir}/.`, CONTAINER_FILE);
    setLabel(socket, `${CONTAINER_FILE}:c1,c2`);
    expect((await labelCheck(enforcing, setup.socketDir))?.ok).toBe(false);

    setLabel(socket, CONTAINER_FILE);
    // What the driver would label besides: SPIRE's link, a link leading out, a subdirectory.
    for (const name of ["api.sock", "socket", "private"]) {
      setLabel(join(setup.socketDir, name), UNCONFINED_CONTAINER_FILE);
    }
    const labelled = await labelCheck(enforcing, setup.socketDir);
    expect(labelled?.ok).toBe(true);
    expect(labelled?.detail).toBe(
      `${setup.socketDir} ${CONTAINER_FILE}, ${socket} ${CONTAINER_FILE}`,
    );

    setLabel(socket, HOST_LABEL);
    const off = await labelCheck(selinuxInputs(root, "", ""), setup.socketDir);
    expect(off?.ok).toBe(true);
    expect(off?.detail).toContain("not needed, SELinux is off");
    expect(off?.detail).toContain(`${socket} ${HOST_LABEL}`);
    setup.agent.stop(true);
  }, 60_000);
});
