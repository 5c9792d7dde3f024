// --recursive-bind on the real topology, with real mounts in real mount namespaces.
//
// This test's namespace stands in for the node: the agent's directory and the kubelet root are
// shared mounts (tmpfs). The driver runs in a namespace of its own, as the DaemonSet's
// container: the agent's directory a slave there (HostToContainer), the kubelet root shared
// (Bidirectional). A pod is a namespace that takes its copy of the target as a slave. A
// read-only tmpfs in the agent's directory stands in for SPIFFEFS.
import { describe, expect, test } from "bun:test";
import {
  existsSync,
  mkdirSync,
  readFileSync,
  readlinkSync,
  rmdirSync,
  rmSync,
  writeFileSync,
} from "node:fs";
import { join } from "node:path";
import { status } from "@grpc/grpc-js";
import type { Subprocess } from "bun";
import type { Check } from "../../../src/cli/doctor-checks.ts";
import { startAgent, talkToAgent } from "../../helpers/agent.ts";
import {
  clients,
  type DriverProcess,
  inPrivateMountNamespace,
  runBinary,
} from "../../helpers/driver.ts";
import {
  mountsUnder,
  type PodVolume,
  publishRequest,
  removeVolume,
  unpublishRequest,
} from "../../helpers/kubelet.ts";
import { rpcFailure } from "../../helpers/rpc.ts";
import { mountTestbed } from "../../helpers/testbed.ts";
import { waitFor } from "../../helpers/wait.ts";

const bed = mountTestbed("recursive", { agent: false });
const { root } = bed;
// The agent's host directory, a shared mount; the Workload API directory is inside it, as
// /run/spire/agent-sockets is inside /run on a node.
const agentMount = join(root, "agent");
const socketDir = join(agentMount, "sockets");
const spiffefs = join(socketDir, "spiffefs");
const kubeletRoot = bed.kubeletRoot;

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
  await waitFor(
    "the pod's namespace to be created",
    () => readlinkSync(`/proc/${pod.pid}/ns/mnt`) !== own,
  );
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

/** A driver that is stopped with SIGTERM at the end, and must have logged no INTERNAL. */
async function startChecked(csiSocketPath: string, args: string[], options = {}) {
  const driver = await bed.start(args, {
    workloadApiSocketDir: socketDir,
    csiSocketPath,
    ...options,
  });
  bed.beforeCleanup(async () => {
    const { stderr } = await driver.stop();
    expect(stderr).not.toContain("code=INTERNAL");
  });
  return driver;
}

/** The driver as a DaemonSet runs it: in its own namespace, the agent's directory a slave. */
function startDaemonSetDriver(csiSocketPath: string, args: string[]): Promise<DriverProcess> {
  const prefix = ["unshare", "--mount", "--propagation", "unchanged", "sh", "-c"];
  return startChecked(csiSocketPath, args, {
    prefix: [...prefix, 'mount --make-rslave "$0" && exec "$@"', agentMount],
  });
}

bed.beforeCleanup(() => {
  for (const pod of pods) pod.kill();
});
mountSpiffefs("one");
const daemonSetSocket = join(root, "plugin", "csi.sock");
const daemonSet = await startDaemonSetDriver(daemonSetSocket, ["--recursive-bind"]);
const daemonSetNode = clients(daemonSetSocket).node;
bed.beforeCleanup(() => {
  for (const agent of agents) agent.stop(true);
  run("umount", "--recursive", "--lazy", agentMount);
  run("umount", "--recursive", "--lazy", kubeletRoot);
});

const preparedVolume = (): PodVolume => bed.volume();

/** Unpublishes as the kubelet does, and removes the volume: no mount may be left below it. */
async function unpublished(node: typeof daemonSetNode, volume: PodVolume): Promise<void> {
  await node.nodeUnpublishVolume(unpublishRequest(volume));
  expect(mountsUnder(volume.targetPath)).toBe(0);
  removeVolume(volume);
}

/** A mount made at the target's `probe` stays out of the agent's directory. */
function probeStaysOut(volume: PodVolume): void {
  mkdirSync(join(socketDir, "probe"));
  try {
    run("mount", "-t", "tmpfs", "tmpfs", join(volume.targetPath, "probe"));
    expect(isMountPoint(join(socketDir, "probe"))).toBe(false);
    run("umount", join(volume.targetPath, "probe"));
  } finally {
    rmSync(join(socketDir, "probe"), { recursive: true });
  }
}

/** The doctor's checks for --recursive-bind, run as an operator would, by name. */
async function doctorChecks(prefix: string[] = []): Promise<Record<string, Check>> {
  const argv = ["doctor", "-workload-api-socket-dir", socketDir, "--kubelet-dir", kubeletRoot];
  const { stdout } = await runBinary([...argv, "--recursive-bind", "--json"], {}, prefix);
  const checks = JSON.parse(stdout) as Check[];
  return Object.fromEntries(checks.map((check) => [check.name, check]));
}
const READ_ONLY_CHECK = "file systems below the Workload API directory are read-only";
const RECEIVES_CHECK = "Workload API directory receives later mounts";
const submountCheck = async () => (await doctorChecks())[READ_ONLY_CHECK];

describe("--recursive-bind, driver in a DaemonSet's namespace", () => {
  test("a file system mounted before publishing is seen at the target and in a pod", async () => {
    const volume = preparedVolume();
    await daemonSetNode.nodePublishVolume(publishRequest(volume));
    expect(readFileSync(join(volume.targetPath, "spiffefs", "svid"), "utf8")).toBe("one");
    expect(await talkToAgent(volume.targetPath)).toBe("pong ping");
    const pod = await startPod();
    expect(readIn(pod.pid, join(volume.targetPath, "spiffefs", "svid"))).toBe("one");
    await unpublished(daemonSetNode, volume);
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
      await unpublished(daemonSetNode, each);
    }
  }, 60_000);

  test("a read-write file system in the directory is refused with FAILED_PRECONDITION naming it", async () => {
    const writable = join(socketDir, "writable");
    mkdirSync(writable);
    run("mount", "-t", "tmpfs", "tmpfs", writable);
    try {
      const details = await refusedForWritable(daemonSetNode, writable);
      expect(details).toContain("--allow-writable-submounts");
      const check = await submountCheck();
      expect(check?.ok).toBe(false);
      expect(check?.detail).toContain(`read-write: ${writable};`);
    } finally {
      run("umount", writable);
      rmSync(writable, { recursive: true, force: true });
    }
    expect((await submountCheck())?.ok).toBe(true);
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
    await unpublished(daemonSetNode, volume);
  }, 60_000);
});

describe("--recursive-bind, driver in the node's namespace (the directory is a shared mount)", async () => {
  const csiSocketPath = join(root, "plugin-node", "csi.sock");
  await startChecked(csiSocketPath, ["--recursive-bind"]);
  const { node } = clients(csiSocketPath);

  test("the target is made a slave: remounts reach it and the pod, nothing goes back, unpublish leaves the agent's mounts", async () => {
    const volume = preparedVolume();
    await node.nodePublishVolume(publishRequest(volume));
    const pod = await startPod();
    const svid = join(volume.targetPath, "spiffefs", "svid");

    run("umount", spiffefs);
    mountSpiffefs("four");
    expect(readFileSync(svid, "utf8")).toBe("four");
    expect(readIn(pod.pid, svid)).toBe("four");

    probeStaysOut(volume);

    await node.nodeUnpublishVolume(unpublishRequest(volume));
    expect(mountsUnder(volume.targetPath)).toBe(0);
    expect(mountsUnderIn(pod.pid, volume.targetPath)).toBe(0);
    removeVolume(volume);
    expect(isMountPoint(spiffefs)).toBe(true);
    expect(readFileSync(join(spiffefs, "svid"), "utf8")).toBe("four");
  }, 60_000);

  test("32 publishes at once (sharing reads of the mount table): every target a slave; 32 unpublishes leave the agent's mounts", async () => {
    const volumes = Array.from({ length: 32 }, preparedVolume);
    const probe = join(socketDir, "probe");
    mkdirSync(probe);
    try {
      await Promise.all(volumes.map((volume) => node.nodePublishVolume(publishRequest(volume))));
      for (const volume of volumes) {
        expect(readFileSync(join(volume.targetPath, "spiffefs", "svid"), "utf8")).toBe("four");
        // Nothing mounted at a target reaches the agent's directory.
        run("mount", "-t", "tmpfs", "tmpfs", join(volume.targetPath, "probe"));
        expect(isMountPoint(probe)).toBe(false);
        run("umount", join(volume.targetPath, "probe"));
      }
      // A kubelet restart re-publishes them all at once: nothing new is mounted.
      const before = volumes.map((volume) => mountsUnder(volume.targetPath));
      await Promise.all(volumes.map((volume) => node.nodePublishVolume(publishRequest(volume))));
      expect(volumes.map((volume) => mountsUnder(volume.targetPath))).toEqual(before);
      await Promise.all(
        volumes.map((volume) => node.nodeUnpublishVolume(unpublishRequest(volume))),
      );
      for (const volume of volumes) {
        expect(mountsUnder(volume.targetPath)).toBe(0);
        removeVolume(volume);
      }
    } finally {
      rmSync(probe, { recursive: true });
    }
    expect(isMountPoint(spiffefs)).toBe(true);
    expect(readFileSync(join(spiffefs, "svid"), "utf8")).toBe("four");
  }, 120_000);
});

/**
 * Publishes a fresh volume through `node`, which must refuse it with FAILED_PRECONDITION for the
 * read-write mount at `writable`, leaving nothing at the target; the refusal's details.
 */
async function refusedForWritable(node: ReturnType<typeof clients>["node"], writable: string) {
  const volume = preparedVolume();
  const error = await rpcFailure(node.nodePublishVolume(publishRequest(volume)));
  expect(error.code).toBe(status.FAILED_PRECONDITION);
  expect(error.details).toContain(`read-write mounts ("${writable}")`);
  expect(mountsUnder(volume.volumeDir)).toBe(0);
  expect(existsSync(volume.targetPath)).toBe(false);
  removeVolume(volume);
  return error.details;
}

/**
 * A driver with --recursive-bind whose `mount` runs `action` first when its arguments match the
 * shell pattern `when`; its node client.
 */
async function withMountStandIn(name: string, when: string, action: string) {
  const mount = Bun.which("mount");
  const PATH = bed.standIn("mount", `case "$*" in ${when}) ${action};; esac\nexec ${mount} "$@"`);
  const csiSocketPath = join(root, name, "csi.sock");
  await bed.start(["--recursive-bind"], {
    workloadApiSocketDir: socketDir,
    csiSocketPath,
    env: { PATH },
  });
  return clients(csiSocketPath).node;
}

describe("--recursive-bind, a read-write file system mounted between the check and the bind", async () => {
  // A `mount` that, while the flag file exists, mounts a read-write tmpfs in the directory being
  // bound just before it binds it: what an agent mounting at that moment does.
  const slipping = join(root, "slip-before-rbind");
  const slipped = join(socketDir, "slipped");
  const node = await withMountStandIn(
    "plugin-slip",
    "*--rbind*",
    `[ -e ${slipping} ] && { ${Bun.which("mount")} -t tmpfs -o size=64k slipped ${slipped} || exit 99; }`,
  );

  test("the published tree is checked again and taken back: FAILED_PRECONDITION, nothing left, the agent's mounts untouched", async () => {
    const svid = readFileSync(join(spiffefs, "svid"), "utf8");
    mkdirSync(slipped);
    writeFileSync(slipping, "");
    try {
      const details = await refusedForWritable(node, slipped);
      // The stand-in did mount, after the driver's check.
      expect(isMountPoint(slipped)).toBe(true);
      expect(details).toContain("while it was being bound");
      // Taking the bind back unmounted nothing of the agent's.
      expect(isMountPoint(spiffefs)).toBe(true);
      expect(readFileSync(join(spiffefs, "svid"), "utf8")).toBe(svid);
    } finally {
      rmSync(slipping, { force: true });
      if (isMountPoint(slipped)) run("umount", slipped);
      rmdirSync(slipped);
    }
    // Without the race, the same driver publishes.
    const volume = preparedVolume();
    await node.nodePublishVolume(publishRequest(volume));
    expect(await talkToAgent(volume.targetPath)).toBe("pong ping");
    await unpublished(node, volume);
  }, 60_000);
});

describe("--recursive-bind, a publish stopped between the bind and making it a slave", async () => {
  // A `mount` that fails to change propagation while the flag file exists.
  const failing = join(root, "fail-make-slave");
  const node = await withMountStandIn(
    "plugin-failing",
    "*--make-rslave*",
    `[ -e ${failing} ] && exit 1`,
  );

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
    await unpublished(node, volume);
    expect(isMountPoint(spiffefs)).toBe(true);
    expect(readFileSync(join(spiffefs, "svid"), "utf8")).toBe("four");
  }, 60_000);

  test("publishing it again makes it a slave: nothing mounted at it reaches the agent", async () => {
    const volume = await interrupted();
    await node.nodePublishVolume(publishRequest(volume));
    probeStaysOut(volume);
    await unpublished(node, volume);
    expect(isMountPoint(spiffefs)).toBe(true);
  }, 60_000);
});

describe("doctor --recursive-bind", () => {
  test("passes where later mounts reach the directory, fails where its mount is private", async () => {
    expect((await doctorChecks())[RECEIVES_CHECK]?.ok).toBe(true);
    const isolated = (
      await doctorChecks(
        inPrivateMountNamespace('mount --make-rprivate "$0" && exec "$@"', agentMount),
      )
    )[RECEIVES_CHECK];
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
      await unpublished(node, volume);
    } finally {
      node.close();
      await driver.stop();
    }
  }, 60_000);
});
