// SPIRE's Helm chart (spiffe/helm-charts-hardened, subchart spiffe-csi-driver) runs a driver
// image with fixed arguments and mounts. This runs the real binary exactly that way: in a root
// of its own (chroot) where the agent's socket directory is a read-only bind at
// /spire-agent-socket, the plugin directory is at /spiffe-csi, and the kubelet's pods directory
// is at its node path with shared propagation (the chart's Bidirectional mount). The root is a
// tmpfs in this test's private mount namespace: nothing is created on the machine's own `/`.
import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import {
  existsSync,
  lstatSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  rmdirSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { join } from "node:path";
import { startAgent, talkToAgent } from "../helpers/agent.ts";
import {
  assertPrivateMountNamespace,
  BINARY,
  clients,
  DriverProcess,
  tempDir,
  waitServing,
} from "../helpers/driver.ts";
import {
  mountsAt,
  mountsUnder,
  podVolume,
  prepareVolume,
  publishRequest,
  removeVolume,
  unpublishRequest,
} from "../helpers/kubelet.ts";

assertPrivateMountNamespace();
// Generous for a loaded machine: covers every test and hook of this file.
setDefaultTimeout(120_000);

// The chart's driver container, verbatim: its arguments, and the node name from the downward API.
const CHART_ARGS = [
  "-workload-api-socket-dir",
  "/spire-agent-socket",
  "-plugin-name",
  "csi.spiffe.io",
  "-csi-socket-path",
  "/spiffe-csi/csi.sock",
];
const NODE_NAME = "node-chart";
// SPIRE's socket name (the chart's agentSocketPath: /run/spire/agent-sockets/spire-agent.sock).
const SOCKET_NAME = "spire-agent.sock";

const chroot = Bun.which("chroot");
const mountCommand = Bun.which("mount");
const umountCommand = Bun.which("umount");

const root = tempDir("chart");
// The driver's root file system; a tmpfs mount point, removed with rmdir only.
const driverRoot = tempDir("chart-root");
const agentDir = join(root, "agent-sockets");
const kubeletRoot = join(root, "kubelet");
const podsDir = join(kubeletRoot, "pods");
const pluginDir = join(kubeletRoot, "plugins", "csi.spiffe.io");
const csiSocketPath = join(pluginDir, "csi.sock");
for (const dir of [agentDir, podsDir, pluginDir]) mkdirSync(dir, { recursive: true });
const agent = startAgent(agentDir, SOCKET_NAME);
const { identity, node } = clients(csiSocketPath);
let driver: DriverProcess;

function run(...argv: string[]): void {
  const result = Bun.spawnSync(argv, { stdout: "pipe", stderr: "pipe" });
  if (result.exitCode !== 0) {
    throw new Error(`${argv.join(" ")} exited with ${result.exitCode}: ${result.stderr}`);
  }
}

/** What the container runtime would give the chart's driver container. */
function buildDriverRoot(): void {
  const mount = mountCommand as string;
  run(mount, "-t", "tmpfs", "-o", "mode=0755", "tmpfs", driverRoot);
  // The system's programs and libraries (mount, umount, the C library), /proc and /dev; links
  // such as /bin -> usr/bin are copied as links.
  for (const entry of ["bin", "sbin", "lib", "lib32", "lib64", "usr", "etc", "proc", "dev"]) {
    const path = `/${entry}`;
    if (!existsSync(path)) continue;
    const inRoot = join(driverRoot, entry);
    if (lstatSync(path).isSymbolicLink()) {
      symlinkSync(readlinkSync(path), inRoot);
    } else {
      mkdirSync(inRoot);
      run(mount, "--rbind", path, inRoot);
    }
  }
  // The image's entrypoint.
  writeFileSync(join(driverRoot, "spiffe-csi-driver"), "");
  run(mount, "--bind", BINARY, join(driverRoot, "spiffe-csi-driver"));
  // volumeMounts: spire-agent-socket-dir at /spire-agent-socket, readOnly: true.
  mkdirSync(join(driverRoot, "spire-agent-socket"));
  run(mount, "--bind", "-o", "ro", agentDir, join(driverRoot, "spire-agent-socket"));
  // spiffe-csi-socket-dir (<kubelet>/plugins/csi.spiffe.io) at /spiffe-csi.
  mkdirSync(join(driverRoot, "spiffe-csi"));
  run(mount, "--bind", pluginDir, join(driverRoot, "spiffe-csi"));
  // mountpoint-dir (<kubelet>/pods) at its node path, Bidirectional: a shared mount and its peer,
  // so that the driver's bind mounts show in this test's view as they reach the kubelet.
  run(mount, "--bind", podsDir, podsDir);
  run(mount, "--make-shared", podsDir);
  mkdirSync(join(driverRoot, podsDir), { recursive: true });
  run(mount, "--bind", podsDir, join(driverRoot, podsDir));
}

function startChartDriver(): DriverProcess {
  return new DriverProcess(
    Bun.spawn([chroot as string, driverRoot, "/spiffe-csi-driver", ...CHART_ARGS], {
      stdin: "ignore",
      stdout: "pipe",
      stderr: "pipe",
      env: { PATH: "/usr/sbin:/usr/bin:/sbin:/bin", MY_NODE_NAME: NODE_NAME },
    }),
  );
}

beforeAll(async () => {
  if (!chroot || !mountCommand || !umountCommand) {
    throw new Error("this test needs chroot (coreutils), mount and umount (util-linux) on PATH");
  }
  buildDriverRoot();
  driver = startChartDriver();
  await waitServing(driver, csiSocketPath);
}, 60_000);

afterAll(async () => {
  identity.close();
  node.close();
  const stopped = driver ? await driver.stop() : undefined;
  agent.stop(true);
  // The driver's root goes first (its mounts are this namespace's only), then the shared pods
  // mount; nothing may remain mounted before anything is removed.
  if (mountsUnder(driverRoot) > 0) run(umountCommand as string, "--recursive", driverRoot);
  if (mountsAt(podsDir) > 0) run(umountCommand as string, podsDir);
  expect(mountsUnder(driverRoot)).toBe(0);
  expect(mountsUnder(root)).toBe(0);
  rmdirSync(driverRoot);
  rmSync(root, { recursive: true, force: true });
  expect(stopped?.code).toBe(0);
  expect(stopped?.stderr).not.toContain("code=INTERNAL");
}, 60_000);

describe("SPIRE's Helm chart: its driver arguments and mounts", () => {
  test("the arguments parse: the plugin name, and the node name from MY_NODE_NAME", async () => {
    expect((await identity.getPluginInfo({})).name).toBe("csi.spiffe.io");
    expect((await node.nodeGetInfo({})).nodeId).toBe(NODE_NAME);
  }, 30_000);

  test("the agent's directory is a read-only mount in the driver's root", () => {
    // mountinfo: "id parent dev root mount-point per-mount-options ...".
    const agentMount = readFileSync("/proc/self/mountinfo", "utf8")
      .split("\n")
      .map((line) => line.split(" "))
      .findLast((fields) => fields[4] === join(driverRoot, "spire-agent-socket"));
    expect(agentMount?.[5]?.split(",")).toContain("ro");
    expect(readdirSync(join(driverRoot, "spire-agent-socket"))).toEqual([SOCKET_NAME]);
  });

  test("a publish reaches the agent through the pod's volume, and an unpublish removes it", async () => {
    const volume = podVolume(kubeletRoot);
    prepareVolume(volume);
    await node.nodePublishVolume(publishRequest(volume));
    // The driver's mount, made in its root, shows at the kubelet's path.
    expect(mountsAt(volume.targetPath)).toBe(1);
    expect(readdirSync(volume.targetPath)).toEqual([SOCKET_NAME]);
    expect(await talkToAgent(volume.targetPath, "through the chart", SOCKET_NAME)).toBe(
      "pong through the chart",
    );
    await node.nodeUnpublishVolume(unpublishRequest(volume));
    expect(mountsAt(volume.targetPath)).toBe(0);
    expect(existsSync(volume.targetPath)).toBe(false);
    removeVolume(volume);
  }, 30_000);

  test("a second driver for the same socket refuses to start, and the first keeps serving", async () => {
    const second = startChartDriver();
    const { code, stderr } = await second.exited();
    expect(code).toBe(1);
    expect(stderr).toContain("another process is serving on /spiffe-csi/csi.sock");
    expect((await identity.probe({})).ready).toBe(true);
  }, 30_000);
});
