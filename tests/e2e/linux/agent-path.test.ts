// The Workload API directory's path, opened the way the kubelet's paths are: no symbolic link on
// it unless the operator allows links, and refused when anyone but root could change a directory
// on the way. The attack it stops: an agent run as a non-root user that owns the directory's
// parent swaps the directory for a link to a host directory, which every pod published afterwards
// would get.
import { describe, expect, test } from "bun:test";
import {
  chmodSync,
  chownSync,
  existsSync,
  mkdirSync,
  readdirSync,
  renameSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { join } from "node:path";
import { status } from "@grpc/grpc-js";
import type { UnixSocketListener } from "bun";
import type { Check } from "../../../src/cli/doctor-checks.ts";
import { getLabel, setLabel } from "../../../src/selinux/xattr.ts";
import { startAgent, talkToAgent } from "../../helpers/agent.ts";
import { BINARY, clients, type DriverProcess, mountTestFile } from "../../helpers/driver.ts";
import {
  mountsUnder,
  preparedVolume,
  publishRequest,
  removeVolume,
  unpublishRequest,
} from "../../helpers/kubelet.ts";
import { freePort } from "../../helpers/port.ts";
import { rpcFailure } from "../../helpers/rpc.ts";
import { testbed } from "../../helpers/testbed.ts";

mountTestFile();

const AGENT_UID = 1000;
const HOST_LABEL = "system_u:object_r:shadow_t:s0";
const bed = testbed("agent-path", { agent: false });
const { root, kubeletRoot } = bed;
// The agent's user must reach its own directories below the test's root.
chmodSync(root, 0o755);
const agents: UnixSocketListener<undefined>[] = [];
const drivers: DriverProcess[] = [];

bed.beforeCleanup(async () => {
  for (const driver of drivers) {
    expect((await driver.stop()).stderr).not.toContain("code=INTERNAL");
  }
  for (const agent of agents) agent.stop(true);
});

/** A directory holding a running agent's socket. */
function agentDir(path: string): string {
  mkdirSync(path, { recursive: true });
  agents.push(startAgent(path));
  return path;
}

let drivenSockets = 0;
async function driverFor(socketDir: string, args: string[] = []) {
  const csiSocketPath = join(root, `plugin-${++drivenSockets}`, "csi.sock");
  drivers.push(await bed.start(args, { workloadApiSocketDir: socketDir, csiSocketPath }));
  return clients(csiSocketPath).node;
}

/** Publishes, checks the pod reaches the agent, unpublishes. */
async function publishes(node: ReturnType<typeof clients>["node"]): Promise<void> {
  const volume = preparedVolume(kubeletRoot);
  await node.nodePublishVolume(publishRequest(volume));
  expect(await talkToAgent(volume.targetPath)).toBe("pong ping");
  await node.nodeUnpublishVolume(unpublishRequest(volume));
  removeVolume(volume);
}

/** A refused publish: its status, and nothing at the target. */
async function refused(node: ReturnType<typeof clients>["node"]) {
  const volume = preparedVolume(kubeletRoot);
  const error = await rpcFailure(node.nodePublishVolume(publishRequest(volume)));
  expect(existsSync(volume.targetPath)).toBe(false);
  expect(mountsUnder(volume.volumeDir)).toBe(0);
  removeVolume(volume);
  return error;
}

/** The doctor's check of the directory's path, as an operator runs it. */
function doctorCheck(socketDir: string, args: string[] = []): Check | undefined {
  const result = Bun.spawnSync(
    [BINARY, "doctor", "-workload-api-socket-dir", socketDir, "--json", ...args],
    { stdout: "pipe", stderr: "pipe" },
  );
  const checks = JSON.parse(result.stdout.toString()) as Check[];
  return checks.find((check) => check.name === "Workload API socket directory's path is safe");
}

describe("symbolic links on the path", () => {
  const real = join(root, "links", "real");
  const alias = join(root, "links", "alias");
  const socketDir = join(alias, "agent-sockets");
  agentDir(join(real, "agent-sockets"));
  symlinkSync(real, alias);

  test("a link on the way is refused with FAILED_PRECONDITION, naming it, where it points, and the flag", async () => {
    const node = await driverFor(socketDir);
    const error = await refused(node);
    expect(error.code).toBe(status.FAILED_PRECONDITION);
    expect(error.details).toContain(`${alias} is a symbolic link (to ${real})`);
    expect(error.details).toContain("--allow-symlinked-socket-dir");
    node.close();
    const check = doctorCheck(socketDir);
    expect(check?.ok).toBe(false);
    expect(check?.detail).toContain(`${alias} is a symbolic link`);
    expect(check?.fix).toContain("--allow-symlinked-socket-dir");
  });

  test("with --allow-symlinked-socket-dir the link is followed and the pod reaches the agent", async () => {
    const node = await driverFor(socketDir, ["--allow-symlinked-socket-dir"]);
    await publishes(node);
    node.close();
    expect(doctorCheck(socketDir, ["--allow-symlinked-socket-dir"])?.ok).toBe(true);
  });
});

describe("who can change a directory on the way", () => {
  test("the agent's user owning the parent: refused, also once it swapped in a link to a host directory", async () => {
    const parent = join(root, "attack", "spire");
    const socketDir = agentDir(join(parent, "agent-sockets"));
    chownSync(parent, AGENT_UID, AGENT_UID);
    chownSync(socketDir, AGENT_UID, AGENT_UID);
    // A host directory the agent's user must never get into pods.
    const secrets = join(root, "attack", "host-secrets");
    mkdirSync(secrets);
    writeFileSync(join(secrets, "shadow"), "root:secret");
    const node = await driverFor(socketDir, ["--allow-symlinked-socket-dir"]);
    const expected = `${parent} is owned by uid ${AGENT_UID}, not root`;
    const before = await refused(node);
    expect(before.code).toBe(status.FAILED_PRECONDITION);
    expect(before.details).toContain(expected);
    expect(before.details).toContain(`chown root ${parent}`);
    // As the agent's user: the directory moved aside, a link to the host directory in its place.
    const swap = Bun.spawnSync(
      [
        "setpriv",
        "--reuid",
        String(AGENT_UID),
        "--regid",
        String(AGENT_UID),
        "--clear-groups",
        "sh",
        "-c",
        'mv "$0/agent-sockets" "$0/agent-sockets.old" && ln -s "$1" "$0/agent-sockets"',
        parent,
        secrets,
      ],
      { stderr: "pipe" },
    );
    expect(swap.stderr.toString()).toBe("");
    expect(readdirSync(socketDir)).toEqual(["shadow"]);
    const after = await refused(node);
    expect(after.code).toBe(status.FAILED_PRECONDITION);
    expect(after.details).toContain(expected);
    node.close();
    const check = doctorCheck(socketDir);
    expect(check?.ok).toBe(false);
    expect(check?.detail).toContain(expected);
    expect(check?.fix).toContain(`chown root ${parent}`);
  });

  test("a parent its group may write to is refused, naming it; /readyz says so too", async () => {
    const parent = join(root, "group", "spire");
    const socketDir = agentDir(join(parent, "agent-sockets"));
    chmodSync(parent, 0o775);
    const port = freePort();
    const node = await driverFor(socketDir, ["--health-addr", `127.0.0.1:${port}`]);
    const error = await refused(node);
    const expected = `${parent} is writable by its group or by others (mode 0775)`;
    expect(error.code).toBe(status.FAILED_PRECONDITION);
    expect(error.details).toContain(expected);
    node.close();
    const ready = await fetch(`http://127.0.0.1:${port}/readyz`);
    expect(ready.status).toBe(503);
    expect(await ready.text()).toContain(expected);
  });

  test("with --selinux-label on, a refused path is never labelled: the host directory it leads to keeps its label", async () => {
    // A file system that stores security.selinux without a policy loaded.
    const base = join(root, "labelled");
    mkdirSync(base);
    expect(
      Bun.spawnSync(["mount", "-t", "tmpfs", "-o", "mode=0755", "labelled", base]).exitCode,
    ).toBe(0);
    try {
      const parent = join(base, "spire");
      const socketDir = agentDir(join(parent, "agent-sockets"));
      chownSync(parent, AGENT_UID, AGENT_UID);
      const secrets = join(base, "host-secrets");
      mkdirSync(secrets);
      writeFileSync(join(secrets, "shadow"), "root:secret");
      for (const path of [secrets, join(secrets, "shadow")]) setLabel(path, HOST_LABEL);
      // What the agent's user can do to its parent: the directory aside, a link in its place.
      renameSync(socketDir, `${socketDir}.old`);
      symlinkSync(secrets, socketDir);
      const port = freePort();
      const node = await driverFor(socketDir, [
        "--selinux-label",
        "on",
        "--allow-symlinked-socket-dir",
        "--health-addr",
        `127.0.0.1:${port}`,
      ]);
      const error = await refused(node);
      expect(error.code).toBe(status.FAILED_PRECONDITION);
      node.close();
      const labels = () => [getLabel(secrets), getLabel(join(secrets, "shadow"))];
      // Started and published: nothing there was relabelled.
      expect(labels()).toEqual([HOST_LABEL, HOST_LABEL]);
      const ready = await fetch(`http://127.0.0.1:${port}/readyz`);
      expect(ready.status).toBe(503);
      expect(await ready.text()).toContain(`${parent} is owned by uid ${AGENT_UID}`);
      // Nor by a readiness check.
      expect(labels()).toEqual([HOST_LABEL, HOST_LABEL]);
      await drivers.pop()?.stop();
    } finally {
      Bun.spawnSync(["umount", "-l", base]);
    }
  });

  test("the directory itself may belong to the agent's user, below root's directories", async () => {
    const socketDir = agentDir(join(root, "own", "spire", "agent-sockets"));
    chownSync(socketDir, AGENT_UID, AGENT_UID);
    const node = await driverFor(socketDir);
    await publishes(node);
    node.close();
    const check = doctorCheck(socketDir);
    expect(check?.ok).toBe(true);
    expect(check?.detail).toContain(socketDir);
  });
});
