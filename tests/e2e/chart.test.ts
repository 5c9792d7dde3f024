// The driver run as Helm charts run it, each in a root of its own (chroot) laid out from the
// container's volume mounts with their propagation, in the test's private mount namespace:
// - this repository's chart, as the spiffe-csi-driver subchart of a parent laid out as SPIRE's
//   chart, with SPIRE's production values: the rendered DaemonSet's driver container, with its
//   exact arguments and environment, in a network namespace of its own (the pod's) serving its
//   probes; registered as node-driver-registrar sees it; publish, stats, unpublish;
// - SPIRE's own chart (spiffe/helm-charts-hardened, subchart spiffe-csi-driver) with only the
//   image swapped: its fixed arguments and its read-only mount of the agent's directory.
// Node paths are under a temporary directory: the charts are rendered with kubeletPath and
// agentSocketPath there.
import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { join } from "node:path";
import { startAgent, talkToAgent } from "../helpers/agent.ts";
import { ContainerRoot, type ContainerSpec, type VolumeSpec } from "../helpers/container.ts";
import {
  assertPrivateMountNamespace,
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
  statsRequest,
  unpublishRequest,
} from "../helpers/kubelet.ts";
import { waitFor } from "../helpers/wait.ts";
import {
  type Container,
  chartDefaultArgs,
  driverSets,
  renderParent,
  type Workload,
} from "../manifests/rules.ts";

assertPrivateMountNamespace();
// Generous for a loaded machine: covers every test and hook of this file.
setDefaultTimeout(120_000);

const SOCKET_NAME = "spire-agent.sock";
// What the image's environment gives the entrypoint.
const IMAGE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
const chroot = Bun.which("chroot");
const unshare = Bun.which("unshare");
const nsenter = Bun.which("nsenter");
const ip = Bun.which("ip");
const mountCommand = Bun.which("mount");
const umountCommand = Bun.which("umount");
if (!chroot || !unshare || !nsenter || !ip || !mountCommand || !umountCommand) {
  throw new Error(
    "this test needs chroot (coreutils), unshare, nsenter, mount and umount (util-linux) and ip (iproute2) on PATH",
  );
}

function run(...argv: string[]): void {
  const result = Bun.spawnSync(argv, { stdout: "pipe", stderr: "pipe" });
  if (result.exitCode !== 0) {
    throw new Error(`${argv.join(" ")} exited with ${result.exitCode}: ${result.stderr}`);
  }
}

/** A container's environment as the kubelet fills it in: values, and the node's name. */
function containerEnv(c: Container, nodeName: string): Record<string, string> {
  const env: Record<string, string> = { PATH: IMAGE_PATH };
  for (const variable of c.env ?? []) {
    if (variable.value !== undefined) env[variable.name] = variable.value;
    else if (variable.valueFrom?.fieldRef?.fieldPath === "spec.nodeName")
      env[variable.name] = nodeName;
    else throw new Error(`${c.name}: cannot fill in ${variable.name}`);
  }
  return env;
}

/** The container's entrypoint with its arguments, chrooted, in a new network namespace. */
function startInRoot(root: string, args: string[], env: Record<string, string>): DriverProcess {
  return new DriverProcess(
    Bun.spawn(
      [
        unshare as string,
        "--net",
        "sh",
        "-c",
        // The pod's own loopback, up; then the image's entrypoint, as the same process.
        'ip="$0"; chroot="$1"; root="$2"; shift 2; "$ip" link set lo up && exec "$chroot" "$root" /spiffe-csi-driver "$@"',
        ip as string,
        chroot as string,
        root,
        ...args,
      ],
      { stdin: "ignore", stdout: "pipe", stderr: "pipe", env },
    ),
  );
}

/** GET http://127.0.0.1:<port><path> from inside the driver's network namespace: the status. */
function getInPod(pid: number, port: number, path: string): number {
  const result = Bun.spawnSync(
    [
      nsenter as string,
      `--net=/proc/${pid}/ns/net`,
      process.execPath,
      "-e",
      `const r = await fetch("http://127.0.0.1:${port}${path}").catch(() => undefined); console.log(r?.status ?? 0);`,
    ],
    { stdout: "pipe", stderr: "pipe" },
  );
  return Number(result.stdout.toString().trim());
}

/** Stops what a describe started, unmounts its roots, then checks nothing stays mounted. */
async function tearDown(
  root: string,
  roots: ContainerRoot[],
  parts: {
    kubelet?: ReturnType<typeof clients>;
    driver?: DriverProcess;
    agent?: { stop(force: boolean): void };
  },
): Promise<void> {
  parts.kubelet?.identity.close();
  parts.kubelet?.node.close();
  const stopped = parts.driver ? await parts.driver.stop() : undefined;
  parts.agent?.stop(true);
  for (const containerRoot of roots) containerRoot.unmount();
  expect(mountsUnder(root)).toBe(0);
  rmSync(root, { recursive: true, force: true });
  expect(stopped?.code).toBe(0);
  expect(stopped?.stderr).not.toContain("code=INTERNAL");
}

/**
 * The kubelet's calls for one pod's volume: publish (the driver's mount, made in its root,
 * reaches the node through the Bidirectional mount, and the agent through it), stats, unpublish.
 */
async function publishCycle(kubelet: ReturnType<typeof clients>, kubeletRoot: string) {
  const volume = podVolume(kubeletRoot);
  prepareVolume(volume);
  await kubelet.node.nodePublishVolume(publishRequest(volume));
  expect(mountsAt(volume.targetPath)).toBe(1);
  expect(readdirSync(volume.targetPath)).toEqual([SOCKET_NAME]);
  expect(await talkToAgent(volume.targetPath, "through the chart", SOCKET_NAME)).toBe(
    "pong through the chart",
  );
  const stats = await kubelet.node.nodeGetVolumeStats(statsRequest(volume));
  expect(stats.volumeCondition?.abnormal).toBe(false);
  await kubelet.node.nodeUnpublishVolume(unpublishRequest(volume));
  expect(mountsAt(volume.targetPath)).toBe(0);
  expect(existsSync(volume.targetPath)).toBe(false);
  removeVolume(volume);
}

describe("this chart, as SPIRE's spiffe-csi-driver subchart: the rendered driver container", () => {
  const NODE_NAME = "node-helm";
  const root = tempDir("helm-chart");
  const kubeletRoot = join(root, "kubelet");
  const agentSocketParent = join(root, "run", "spire");
  const agentDir = join(agentSocketParent, "agent-sockets");
  const docs = renderParent(
    ["production.yaml"],
    "--set",
    `spiffe-csi-driver.kubeletPath=${kubeletRoot}`,
    "--set",
    `spiffe-csi-driver.agentSocketPath=${join(agentDir, SOCKET_NAME)}`,
  );
  const set = driverSets(docs)[0] as Workload;
  const podSpec = set.spec.template.spec;
  const driverContainer = podSpec.containers.find(
    (c) => c.name === "spiffe-csi-driver",
  ) as Container;
  const registrarContainer = podSpec.containers.find(
    (c) => c.name === "node-driver-registrar",
  ) as Container;
  const volumes = podSpec.volumes as VolumeSpec[];
  const driverRoot = new ContainerRoot(join(root, "roots", "driver"));
  const registrarRoot = new ContainerRoot(join(root, "roots", "registrar"));
  const pluginName = "csi.spiffe.io";
  const registrationPath = join(kubeletRoot, "plugins", pluginName, "csi.sock");
  let agent: ReturnType<typeof startAgent>;
  let driver: DriverProcess;
  let kubeletClients: ReturnType<typeof clients>;

  beforeAll(async () => {
    // What the node has before the pod starts: the kubelet's directories, the agent's socket.
    mkdirSync(join(kubeletRoot, "pods"), { recursive: true });
    mkdirSync(join(kubeletRoot, "plugins_registry"), { recursive: true });
    mkdirSync(agentDir, { recursive: true });
    agent = startAgent(agentDir, SOCKET_NAME);
    driverRoot.layOut(driverContainer as ContainerSpec, volumes);
    registrarRoot.layOut(registrarContainer as ContainerSpec, volumes);
    driver = startInRoot(
      driverRoot.root,
      driverContainer.args ?? [],
      containerEnv(driverContainer, NODE_NAME),
    );
    // The kubelet reaches the driver at the path the registrar announces.
    await waitServing(driver, registrationPath);
    kubeletClients = clients(registrationPath);
  }, 60_000);

  afterAll(async () => {
    await tearDown(root, [registrarRoot, driverRoot], { kubelet: kubeletClients, driver, agent });
  }, 60_000);

  test("its exact arguments and environment", () => {
    expect(set.metadata.namespace).toBe("spire-system");
    expect(driverContainer.args).toEqual(chartDefaultArgs(agentDir));
    expect(driverContainer.env).toEqual([
      { name: "MY_NODE_NAME", valueFrom: { fieldRef: { fieldPath: "spec.nodeName" } } },
    ]);
  });

  test("its probes: /healthz on the health port answers 200, and the agent is ready", async () => {
    const port = driverContainer.ports?.find((p) => p.name === "health")?.containerPort as number;
    expect(port).toBe(9808);
    for (const probe of [driverContainer.livenessProbe, driverContainer.readinessProbe]) {
      expect(probe?.httpGet?.port).toBe("health");
      const path = probe?.httpGet?.path as string;
      await waitFor(`${path} answering 200`, () => getInPod(driver.proc.pid, port, path) === 200);
    }
    await waitFor(
      "/readyz answering 200",
      () => getInPod(driver.proc.pid, port, "/readyz") === 200,
    );
  });

  test("registered: the registrar's --csi-address and the kubelet's path reach the driver", async () => {
    const csiAddress = registrarContainer.args?.[0]?.replace("--csi-address=", "") as string;
    const throughRegistrar = clients(join(registrarRoot.root, csiAddress));
    try {
      expect((await throughRegistrar.identity.getPluginInfo({})).name).toBe(pluginName);
    } finally {
      throughRegistrar.identity.close();
      throughRegistrar.node.close();
    }
    expect(registrarContainer.args).toContain(`--kubelet-registration-path=${registrationPath}`);
    expect((await kubeletClients.identity.getPluginInfo({})).name).toBe(pluginName);
    expect((await kubeletClients.node.nodeGetInfo({})).nodeId).toBe(NODE_NAME);
    expect((await kubeletClients.identity.probe({})).ready).toBe(true);
  });

  test("the agent's directory is mounted HostToContainer: a mount made later on the node reaches the driver", () => {
    const later = join(agentSocketParent, "later");
    mkdirSync(later);
    run(mountCommand as string, "-t", "tmpfs", "tmpfs", later);
    try {
      expect(mountsAt(join(driverRoot.root, later))).toBe(1);
    } finally {
      run(umountCommand as string, later);
    }
    expect(mountsAt(join(driverRoot.root, later))).toBe(0);
  });

  test("publish reaches the agent through the pod's volume; stats; unpublish removes it", async () => {
    await publishCycle(kubeletClients, kubeletRoot);
  });
});

describe("SPIRE's chart with only the image swapped: its driver arguments and mounts", () => {
  // The subchart's driver container, verbatim: its arguments, the node name from the downward
  // API, the agent's directory read-only at /spire-agent-socket, the plugin directory at
  // /spiffe-csi, the kubelet's pods directory at its node path, Bidirectional.
  const CHART_ARGS = [
    "-workload-api-socket-dir",
    "/spire-agent-socket",
    "-plugin-name",
    "csi.spiffe.io",
    "-csi-socket-path",
    "/spiffe-csi/csi.sock",
  ];
  const NODE_NAME = "node-chart";
  const root = tempDir("spire-chart");
  const agentDir = join(root, "agent-sockets");
  const kubeletRoot = join(root, "kubelet");
  const podsDir = join(kubeletRoot, "pods");
  const pluginDir = join(kubeletRoot, "plugins", "csi.spiffe.io");
  const csiSocketPath = join(pluginDir, "csi.sock");
  const volumes: VolumeSpec[] = [
    { name: "spire-agent-socket-dir", hostPath: { path: agentDir, type: "DirectoryOrCreate" } },
    { name: "spiffe-csi-socket-dir", hostPath: { path: pluginDir, type: "DirectoryOrCreate" } },
    { name: "mountpoint-dir", hostPath: { path: podsDir, type: "Directory" } },
  ];
  const driverContainer: ContainerSpec = {
    name: "spiffe-csi-driver",
    volumeMounts: [
      { name: "spire-agent-socket-dir", mountPath: "/spire-agent-socket", readOnly: true },
      { name: "spiffe-csi-socket-dir", mountPath: "/spiffe-csi" },
      { name: "mountpoint-dir", mountPath: podsDir, mountPropagation: "Bidirectional" },
    ],
  };
  const driverRoot = new ContainerRoot(join(root, "roots", "driver"));
  const env = { PATH: IMAGE_PATH, MY_NODE_NAME: NODE_NAME };
  let agent: ReturnType<typeof startAgent>;
  let driver: DriverProcess;
  let kubeletClients: ReturnType<typeof clients>;

  beforeAll(async () => {
    mkdirSync(podsDir, { recursive: true });
    mkdirSync(agentDir, { recursive: true });
    agent = startAgent(agentDir, SOCKET_NAME);
    driverRoot.layOut(driverContainer, volumes);
    driver = startInRoot(driverRoot.root, CHART_ARGS, env);
    await waitServing(driver, csiSocketPath);
    kubeletClients = clients(csiSocketPath);
  }, 60_000);

  afterAll(async () => {
    await tearDown(root, [driverRoot], { kubelet: kubeletClients, driver, agent });
  }, 60_000);

  test("the arguments parse: the plugin name, and the node name from MY_NODE_NAME", async () => {
    expect((await kubeletClients.identity.getPluginInfo({})).name).toBe("csi.spiffe.io");
    expect((await kubeletClients.node.nodeGetInfo({})).nodeId).toBe(NODE_NAME);
  });

  test("the agent's directory is a read-only mount in the driver's root", () => {
    // mountinfo: "id parent dev root mount-point per-mount-options ...".
    const agentMount = readFileSync("/proc/self/mountinfo", "utf8")
      .split("\n")
      .map((line) => line.split(" "))
      .findLast((fields) => fields[4] === join(driverRoot.root, "spire-agent-socket"));
    expect(agentMount?.[5]?.split(",")).toContain("ro");
    expect(readdirSync(join(driverRoot.root, "spire-agent-socket"))).toEqual([SOCKET_NAME]);
  });

  test("publish reaches the agent through the pod's volume; stats; unpublish removes it", async () => {
    await publishCycle(kubeletClients, kubeletRoot);
  });

  test("a second driver for the same socket refuses to start, and the first keeps serving", async () => {
    const second = startInRoot(driverRoot.root, CHART_ARGS, env);
    const { code, stderr } = await second.exited();
    expect(code).toBe(1);
    expect(stderr).toContain("another process is serving on /spiffe-csi/csi.sock");
    expect((await kubeletClients.identity.probe({})).ready).toBe(true);
  });
});
