// --recursive-bind on the real topology, with real mounts in real mount namespaces.
//
// This test's namespace stands in for the node: the agent's directory and the kubelet root are
// shared mounts (tmpfs). The driver runs in a namespace of its own, as the DaemonSet's
// container: the agent's directory a slave there (HostToContainer), the kubelet root shared
// (Bidirectional). A pod is a namespace that takes its copy of the target as a slave. A
// read-only tmpfs in the agent's directory stands in for SPIFFEFS.
import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { existsSync, mkdirSync, readFileSync, readlinkSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { status } from "@grpc/grpc-js";
import type { Subprocess } from "bun";
import type { Check } from "../../src/cli/doctor-checks.ts";
import { startAgent, talkToAgent } from "../helpers/agent.ts";
import {
  assertPrivateMountNamespace,
  BINARY,
  clients,
  DriverProcess,
  startDriver,
  tempDir,
  waitServing,
} from "../helpers/driver.ts";
import {
  mountsUnder,
  type PodVolume,
  podVolume,
  prepareVolume,
  publishRequest,
  removeVolume,
  unpublishRequest,
} from "../helpers/kubelet.ts";
import { rpcFailure } from "../helpers/rpc.ts";

assertPrivateMountNamespace();
// Generous for a loaded machine: covers every test and hook of this file.
setDefaultTimeout(120_000);

const root = tempDir("recursive");
// The agent's host directory, a shared mount; the Workload API directory is inside it, as
// /run/spire/agent-sockets is inside /run on a node.
const agentMount = join(root, "agent");
const socketDir = join(agentMount, "sockets");
const spiffefs = join(socketDir, "spiffefs");
const kubeletRoot = join(root, "kubelet");

/** Runs a command to completion; its stdout, or an error with its stderr. */
function run(...argv: string[]): string {
  const result = Bun.spawnSync(argv, { stdout: "pipe", stderr: "pipe" });
  if (result.exitCode !== 0) {
    throw new Error(`${argv.join(" ")} exited ${result.exitCode}: ${result.stderr.toString()}`);
  }
  return result.stdout.toString();
}

function isMountPoint(path: string, inNamespaceOf?: number): boolean {
  const prefix = inNamespaceOf === undefined ? [] : ["nsenter", "-t", String(inNamespaceOf), "-m"];
  return Bun.spawnSync([...prefix, "mountpoint", "-q", path]).exitCode === 0;
}

/** SPIFFEFS's stand-in: a tmpfs holding `svid` with `content`, then made read-only. */
function mountSpiffefs(content: string, at = spiffefs): void {
  mkdirSync(at, { recursive: true });
  run("mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", at);
  writeFileSync(join(at, "svid"), content);
  run("mount", "-o", "remount,ro", at);
}

/** A pod: a process in a mount namespace copied from this one, every mount a slave. */
async function startPod(): Promise<Subprocess> {
  const pod = Bun.spawn(["unshare", "--mount", "--propagation", "slave", "sleep", "600"]);
  const own = readlinkSync("/proc/self/ns/mnt");
  for (let waited = 0; readlinkSync(`/proc/${pod.pid}/ns/mnt`) === own; waited += 5) {
    if (waited > 60_000) throw new Error("the pod's namespace was not created in 60 s");
    await Bun.sleep(5);
  }
  pods.push(pod);
  return pod;
}
const pods: Subprocess[] = [];

/** A file as a process in another namespace sees it, or the error `cat` gives. */
function readIn(pid: number, path: string): string {
  const result = Bun.spawnSync(["nsenter", "-t", String(pid), "-m", "cat", path], {
    stdout: "pipe",
    stderr: "pipe",
  });
  return result.exitCode === 0 ? result.stdout.toString() : `error: ${result.stderr.toString()}`;
}

function mountsUnderIn(pid: number, dir: string): number {
  return run("nsenter", "-t", String(pid), "-m", "cat", "/proc/self/mountinfo")
    .split("\n")
    .filter((line) => {
      const mountPoint = line.split(" ")[4];
      return mountPoint === dir || mountPoint?.startsWith(`${dir}/`);
    }).length;
}

mkdirSync(agentMount);
mkdirSync(kubeletRoot);
run("mount", "-t", "tmpfs", "tmpfs", agentMount);
run("mount", "--make-shared", agentMount);
run("mount", "-t", "tmpfs", "tmpfs", kubeletRoot);
run("mount", "--make-shared", kubeletRoot);
mkdirSync(socketDir);
const agents = [startAgent(socketDir)];

/** The driver as a DaemonSet runs it: in its own namespace, the agent's directory a slave. */
async function startDaemonSetDriver(csiSocketPath: string, args: string[]) {
  const driver = new DriverProcess(
    Bun.spawn(
      [
        "unshare",
        "--mount",
        "--propagation",
        "unchanged",
        "sh",
        "-c",
        'mount --make-rslave "$0" && exec "$@"',
        agentMount,
        BINARY,
        "-workload-api-socket-dir",
        socketDir,
        "-csi-socket-path",
        csiSocketPath,
        ...args,
      ],
      {
        stdin: "ignore",
        stdout: "pipe",
        stderr: "pipe",
        env: { PATH: process.env.PATH ?? "/usr/bin:/bin", MY_NODE_NAME: "node-1" },
      },
    ),
  );
  await waitServing(driver, csiSocketPath);
  return driver;
}

const daemonSetSocket = join(root, "plugin", "csi.sock");
let daemonSet: DriverProcess;
const daemonSetNode = clients(daemonSetSocket).node;

beforeAll(async () => {
  mountSpiffefs("one");
  daemonSet = await startDaemonSetDriver(daemonSetSocket, ["--recursive-bind"]);
}, 60_000);

afterAll(async () => {
  for (const pod of pods) pod.kill();
  daemonSetNode.close();
  const { stderr } = await daemonSet.stop();
  expect(stderr).not.toContain("code=INTERNAL");
  for (const agent of agents) agent.stop(true);
  run("umount", "--recursive", "--lazy", agentMount);
  run("umount", "--recursive", "--lazy", kubeletRoot);
  rmSync(root, { recursive: true, force: true });
}, 60_000);

function preparedVolume(): PodVolume {
  const volume = podVolume(kubeletRoot);
  prepareVolume(volume);
  return volume;
}

/** The doctor's checks for --recursive-bind, run as an operator would, by name. */
function doctorChecks(prefix: string[] = []): Record<string, Check> {
  const result = Bun.spawnSync(
    [...prefix, BINARY, "doctor", "-workload-api-socket-dir", socketDir].concat([
      "--kubelet-dir",
      kubeletRoot,
      "--recursive-bind",
      "--json",
    ]),
    { stdout: "pipe", stderr: "pipe" },
  );
  const checks = JSON.parse(result.stdout.toString()) as Check[];
  return Object.fromEntries(checks.map((check) => [check.name, check]));
}
const READ_ONLY_CHECK = "file systems below the Workload API directory are read-only";
const RECEIVES_CHECK = "Workload API directory receives later mounts";
const submountCheck = () => doctorChecks()[READ_ONLY_CHECK];

describe("--recursive-bind, driver in a DaemonSet's namespace", () => {
  test("a file system mounted before publishing is seen at the target and in a pod", async () => {
    const volume = preparedVolume();
    await daemonSetNode.nodePublishVolume(publishRequest(volume));
    expect(readFileSync(join(volume.targetPath, "spiffefs", "svid"), "utf8")).toBe("one");
    expect(await talkToAgent(volume.targetPath)).toBe("pong ping");
    const pod = await startPod();
    expect(readIn(pod.pid, join(volume.targetPath, "spiffefs", "svid"))).toBe("one");
    await daemonSetNode.nodeUnpublishVolume(unpublishRequest(volume));
    expect(mountsUnder(volume.targetPath)).toBe(0);
    removeVolume(volume);
  }, 60_000);

  test("a file system mounted again after publishing (a FUSE server's restart) reaches the target, the driver and the pod; unpublish leaves nothing", async () => {
    const volume = preparedVolume();
    await daemonSetNode.nodePublishVolume(publishRequest(volume));
    const pod = await startPod();
    const svid = join(volume.targetPath, "spiffefs", "svid");
    expect(readIn(pod.pid, svid)).toBe("one");

    run("umount", spiffefs);
    expect(existsSync(svid)).toBe(false);
    expect(readIn(pod.pid, svid)).toStartWith("error:");
    mountSpiffefs("two");
    expect(readFileSync(svid, "utf8")).toBe("two");
    expect(readIn(daemonSet.proc.pid, svid)).toBe("two");
    expect(readIn(pod.pid, svid)).toBe("two");

    // A file system that was not there at all when the volume was published.
    const later = join(socketDir, "later");
    mountSpiffefs("later", later);
    try {
      expect(readFileSync(join(volume.targetPath, "later", "svid"), "utf8")).toBe("later");
      expect(readIn(pod.pid, join(volume.targetPath, "later", "svid"))).toBe("later");

      // A kubelet restart's re-publish mounts nothing new.
      const before = mountsUnder(volume.targetPath);
      await daemonSetNode.nodePublishVolume(publishRequest(volume));
      expect(mountsUnder(volume.targetPath)).toBe(before);

      await daemonSetNode.nodeUnpublishVolume(unpublishRequest(volume));
      expect(mountsUnder(volume.targetPath)).toBe(0);
      expect(mountsUnderIn(daemonSet.proc.pid, volume.targetPath)).toBe(0);
      expect(mountsUnderIn(pod.pid, volume.targetPath)).toBe(0);
      expect(existsSync(volume.targetPath)).toBe(false);
      removeVolume(volume);
      // The agent's own file systems stay where they are.
      expect(isMountPoint(spiffefs)).toBe(true);
      expect(isMountPoint(later)).toBe(true);
      expect(readFileSync(join(spiffefs, "svid"), "utf8")).toBe("two");
    } finally {
      run("umount", later);
    }
  }, 60_000);

  test("a mount made under a target never reaches the agent's directory or another target", async () => {
    const [volume, other] = [preparedVolume(), preparedVolume()];
    await daemonSetNode.nodePublishVolume(publishRequest(volume));
    await daemonSetNode.nodePublishVolume(publishRequest(other));
    mkdirSync(join(socketDir, "probe"));
    try {
      // On the node, and in the driver's namespace.
      for (const inNamespaceOf of [undefined, daemonSet.proc.pid]) {
        const prefix =
          inNamespaceOf === undefined ? [] : ["nsenter", "-t", String(inNamespaceOf), "-m"];
        run(...prefix, "mount", "-t", "tmpfs", "tmpfs", join(volume.targetPath, "probe"));
        expect(isMountPoint(join(volume.targetPath, "probe"))).toBe(true);
        expect(isMountPoint(join(socketDir, "probe"))).toBe(false);
        expect(isMountPoint(join(socketDir, "probe"), daemonSet.proc.pid)).toBe(false);
        expect(isMountPoint(join(other.targetPath, "probe"))).toBe(false);
        run(...prefix, "umount", join(volume.targetPath, "probe"));
      }
    } finally {
      rmSync(join(socketDir, "probe"), { recursive: true, force: true });
    }
    for (const each of [volume, other]) {
      await daemonSetNode.nodeUnpublishVolume(unpublishRequest(each));
      expect(mountsUnder(each.targetPath)).toBe(0);
      removeVolume(each);
    }
  }, 60_000);

  test("a read-write file system in the directory is refused with FAILED_PRECONDITION naming it", async () => {
    const writable = join(socketDir, "writable");
    mkdirSync(writable);
    run("mount", "-t", "tmpfs", "tmpfs", writable);
    try {
      const volume = preparedVolume();
      const error = await rpcFailure(daemonSetNode.nodePublishVolume(publishRequest(volume)));
      expect(error.code).toBe(status.FAILED_PRECONDITION);
      expect(error.details).toContain(`read-write mounts ("${writable}")`);
      expect(error.details).toContain("--allow-writable-submounts");
      expect(mountsUnder(volume.volumeDir)).toBe(0);
      expect(existsSync(volume.targetPath)).toBe(false);
      removeVolume(volume);
      const check = submountCheck();
      expect(check?.ok).toBe(false);
      expect(check?.detail).toContain(`read-write: ${writable};`);
    } finally {
      run("umount", writable);
      rmSync(writable, { recursive: true, force: true });
    }
    expect(submountCheck()?.ok).toBe(true);
  }, 60_000);

  test("the agent's directory re-created after publishing: the stale tree is replaced", async () => {
    const volume = preparedVolume();
    await daemonSetNode.nodePublishVolume(publishRequest(volume));
    run("umount", spiffefs);
    rmSync(socketDir, { recursive: true });
    mkdirSync(socketDir);
    mountSpiffefs("three");
    agents.push(startAgent(socketDir));
    await daemonSetNode.nodePublishVolume(publishRequest(volume));
    expect(readFileSync(join(volume.targetPath, "spiffefs", "svid"), "utf8")).toBe("three");
    expect(await talkToAgent(volume.targetPath)).toBe("pong ping");
    await daemonSetNode.nodeUnpublishVolume(unpublishRequest(volume));
    expect(mountsUnder(volume.targetPath)).toBe(0);
    removeVolume(volume);
  }, 60_000);
});

describe("--recursive-bind, driver in the node's namespace (the directory is a shared mount)", () => {
  const csiSocketPath = join(root, "plugin-node", "csi.sock");
  let driver: DriverProcess;
  let node: ReturnType<typeof clients>["node"];

  beforeAll(async () => {
    driver = await startDriver({
      workloadApiSocketDir: socketDir,
      csiSocketPath,
      args: ["--recursive-bind"],
    });
    node = clients(csiSocketPath).node;
  }, 60_000);

  afterAll(async () => {
    node.close();
    const { stderr } = await driver.stop();
    expect(stderr).not.toContain("code=INTERNAL");
  }, 60_000);

  test("the target is made a slave: remounts reach it and the pod, nothing goes back, unpublish leaves the agent's mounts", async () => {
    const volume = preparedVolume();
    await node.nodePublishVolume(publishRequest(volume));
    const pod = await startPod();
    const svid = join(volume.targetPath, "spiffefs", "svid");

    run("umount", spiffefs);
    mountSpiffefs("four");
    expect(readFileSync(svid, "utf8")).toBe("four");
    expect(readIn(pod.pid, svid)).toBe("four");

    mkdirSync(join(socketDir, "probe"));
    run("mount", "-t", "tmpfs", "tmpfs", join(volume.targetPath, "probe"));
    expect(isMountPoint(join(socketDir, "probe"))).toBe(false);
    run("umount", join(volume.targetPath, "probe"));
    rmSync(join(socketDir, "probe"), { recursive: true });

    await node.nodeUnpublishVolume(unpublishRequest(volume));
    expect(mountsUnder(volume.targetPath)).toBe(0);
    expect(mountsUnderIn(pod.pid, volume.targetPath)).toBe(0);
    removeVolume(volume);
    expect(isMountPoint(spiffefs)).toBe(true);
    expect(readFileSync(join(spiffefs, "svid"), "utf8")).toBe("four");
  }, 60_000);
});

describe("--recursive-bind, a publish stopped between the bind and making it a slave", () => {
  // A `mount` that fails to change propagation while the flag file exists.
  const failing = join(root, "fail-make-slave");
  const bin = join(root, "bin");
  mkdirSync(bin);
  writeFileSync(
    join(bin, "mount"),
    `#!/bin/sh\ncase "$*" in *--make-rslave*) [ -e ${failing} ] && exit 1;; esac\nexec ${Bun.which("mount")} "$@"\n`,
    { mode: 0o755 },
  );
  const csiSocketPath = join(root, "plugin-failing", "csi.sock");
  let driver: DriverProcess;
  let node: ReturnType<typeof clients>["node"];

  beforeAll(async () => {
    driver = await startDriver({
      workloadApiSocketDir: socketDir,
      csiSocketPath,
      args: ["--recursive-bind"],
      env: { PATH: `${bin}:${process.env.PATH}` },
    });
    node = clients(csiSocketPath).node;
  }, 60_000);

  afterAll(async () => {
    node.close();
    await driver.stop();
  }, 60_000);

  /** A volume left bound and still a peer of the agent's directory. */
  async function interrupted(): Promise<PodVolume> {
    const volume = preparedVolume();
    writeFileSync(failing, "");
    try {
      const error = await rpcFailure(node.nodePublishVolume(publishRequest(volume)));
      expect(error.code).toBe(status.INTERNAL);
      expect(error.details).toContain("slaves");
    } finally {
      rmSync(failing);
    }
    expect(isMountPoint(volume.targetPath)).toBe(true);
    return volume;
  }

  test("unpublishing it makes it a slave first: the agent's file systems stay mounted", async () => {
    const volume = await interrupted();
    await node.nodeUnpublishVolume(unpublishRequest(volume));
    expect(mountsUnder(volume.targetPath)).toBe(0);
    removeVolume(volume);
    expect(isMountPoint(spiffefs)).toBe(true);
    expect(readFileSync(join(spiffefs, "svid"), "utf8")).toBe("four");
  }, 60_000);

  test("publishing it again makes it a slave: nothing mounted at it reaches the agent", async () => {
    const volume = await interrupted();
    await node.nodePublishVolume(publishRequest(volume));
    mkdirSync(join(socketDir, "probe"));
    try {
      run("mount", "-t", "tmpfs", "tmpfs", join(volume.targetPath, "probe"));
      expect(isMountPoint(join(socketDir, "probe"))).toBe(false);
      run("umount", join(volume.targetPath, "probe"));
    } finally {
      rmSync(join(socketDir, "probe"), { recursive: true });
    }
    await node.nodeUnpublishVolume(unpublishRequest(volume));
    expect(mountsUnder(volume.targetPath)).toBe(0);
    removeVolume(volume);
    expect(isMountPoint(spiffefs)).toBe(true);
  }, 60_000);
});

describe("doctor --recursive-bind", () => {
  test("passes where later mounts reach the directory, fails where its mount is private", () => {
    expect(doctorChecks()[RECEIVES_CHECK]?.ok).toBe(true);
    const isolated = doctorChecks([
      "unshare",
      "--mount",
      "--propagation",
      "private",
      "sh",
      "-c",
      'mount --make-rprivate "$0" && exec "$@"',
      agentMount,
    ])[RECEIVES_CHECK];
    expect(isolated?.ok).toBe(false);
    expect(isolated?.fix).toContain("mountPropagation: HostToContainer");
  }, 60_000);
});

describe("without --recursive-bind", () => {
  test("file systems in the directory stay out of the target, as with a plain bind", async () => {
    const csiSocketPath = join(root, "plugin-plain", "csi.sock");
    const driver = await startDaemonSetDriver(csiSocketPath, []);
    const { node } = clients(csiSocketPath);
    try {
      const volume = preparedVolume();
      await node.nodePublishVolume(publishRequest(volume));
      expect(await talkToAgent(volume.targetPath)).toBe("pong ping");
      expect(existsSync(join(volume.targetPath, "spiffefs", "svid"))).toBe(false);
      expect(mountsUnder(volume.targetPath)).toBe(1);
      await node.nodeUnpublishVolume(unpublishRequest(volume));
      expect(mountsUnder(volume.targetPath)).toBe(0);
      removeVolume(volume);
    } finally {
      node.close();
      await driver.stop();
    }
  }, 60_000);
});
