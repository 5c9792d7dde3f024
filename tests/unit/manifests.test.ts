// The deployment as kustomize renders it (standalone, in the agent's DaemonSet, with each
// component, and an overlay that changes every setting) validates against the Kubernetes API
// schemas, and follows the deployment's rules. Each rule is a function that lists what breaks
// it, shown to pass on every render and to fail on a render broken on purpose.
import { describe, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { join, posix, resolve } from "node:path";
import { parseArgs } from "citty";
import { DaemonSet } from "kubernetes-models/apps/v1";
import { NetworkPolicy } from "kubernetes-models/networking.k8s.io/v1";
import {
  ClusterRole,
  ClusterRoleBinding,
  RoleBinding,
} from "kubernetes-models/rbac.authorization.k8s.io/v1";
import { CSIDriver } from "kubernetes-models/storage.k8s.io/v1";
import { ConfigMap, Namespace, Pod, ResourceQuota, ServiceAccount } from "kubernetes-models/v1";
import { parseAllDocuments } from "yaml";
import { normalizeArgv } from "../../src/cli/argv.ts";
import { configFromArgs, args as driverArgs } from "../../src/cli/config.ts";

const repo = resolve(import.meta.dir, "../..");
const kubernetes = join(repo, "deploy", "kubernetes");
const fixtures = join(repo, "tests", "fixtures");

type Doc = {
  apiVersion: string;
  kind: string;
  metadata: { name: string; namespace?: string; labels?: Record<string, string> };
} & Record<string, unknown>;
type Env = { name: string; value?: string };
type Mount = { name: string; mountPath: string; mountPropagation?: string; readOnly?: boolean };
type Probe = { httpGet?: { path: string; port: string | number } };
type Container = {
  name: string;
  image?: string;
  args?: string[];
  env?: Env[];
  ports?: { name?: string; containerPort: number }[];
  volumeMounts?: Mount[];
  livenessProbe?: Probe;
  readinessProbe?: Probe;
  resources?: unknown;
  securityContext?: Record<string, unknown>;
};
type Volume = {
  name: string;
  hostPath?: { path: string };
  emptyDir?: object;
  csi?: { driver: string; readOnly?: boolean };
};
type PodSpec = {
  containers: Container[];
  volumes?: Volume[];
  nodeSelector?: Record<string, string>;
  tolerations?: unknown[];
  priorityClassName?: string;
  serviceAccountName?: string;
  terminationGracePeriodSeconds?: number;
};
type Workload = Doc & {
  spec: { template: { metadata: { labels: Record<string, string> }; spec: PodSpec } };
};

function parse(text: string): Doc[] {
  return parseAllDocuments(text).map((doc) => {
    expect(doc.errors).toEqual([]);
    return doc.toJS() as Doc;
  });
}

const kubectl = Bun.which("kubectl");

/** `kubectl kustomize dir`, parsed. kubectl (1.27 or later, for components and replacements) is required. */
function render(dir: string): Doc[] {
  if (!kubectl) {
    throw new Error("kubectl (with its built-in kustomize) is required to render the manifests");
  }
  const result = Bun.spawnSync([kubectl, "kustomize", dir], { stdout: "pipe", stderr: "pipe" });
  if (result.exitCode !== 0) throw new Error(`kubectl kustomize ${dir}: ${result.stderr}`);
  return parse(result.stdout.toString());
}

const renders = {
  standalone: render(kubernetes),
  agent: render(join(kubernetes, "example-agent")),
  overlay: render(join(fixtures, "overlay")),
  openshift: render(join(fixtures, "openshift")),
  nodeCritical: render(join(fixtures, "node-critical")),
  namespace: render(join(kubernetes, "namespace")),
};
const workloadPod = parse(readFileSync(join(kubernetes, "workload.yaml"), "utf8"));
const exampleAgent = parse(
  readFileSync(join(kubernetes, "example-agent", "spire-agent.yaml"), "utf8"),
);

const models: Record<string, new (data: never) => { validate(): void }> = {
  "v1/Namespace": Namespace,
  "v1/ServiceAccount": ServiceAccount,
  "v1/ConfigMap": ConfigMap,
  "v1/Pod": Pod,
  "v1/ResourceQuota": ResourceQuota,
  "apps/v1/DaemonSet": DaemonSet,
  "storage.k8s.io/v1/CSIDriver": CSIDriver,
  "networking.k8s.io/v1/NetworkPolicy": NetworkPolicy,
  "rbac.authorization.k8s.io/v1/ClusterRole": ClusterRole,
  "rbac.authorization.k8s.io/v1/ClusterRoleBinding": ClusterRoleBinding,
  "rbac.authorization.k8s.io/v1/RoleBinding": RoleBinding,
};

const driverSets = (docs: Doc[]) =>
  docs.filter(
    (d): d is Workload =>
      d.kind === "DaemonSet" &&
      (d as Workload).spec.template.spec.containers.some((c) => c.name === "spiffe-csi-driver"),
  );
const one = <T extends Doc>(docs: Doc[], kind: string) => {
  const found = docs.filter((d) => d.kind === kind);
  expect(found.length).toBe(1);
  return found[0] as T;
};
const container = (spec: PodSpec, name: string) =>
  spec.containers.find((c) => c.name === name) as Container;
const envValue = (c: Container, name: string) => c.env?.find((e) => e.name === name)?.value;
/** Kubernetes' expansion of $(VAR) in a container's arguments, from its env. */
const expand = (c: Container, arg: string) =>
  arg.replace(/\$\((\w+)\)/g, (whole, name: string) => envValue(c, name) ?? whole);
const flag = (c: Container, name: string) =>
  c.args
    ?.map((a) => expand(c, a))
    .find((a) => a.startsWith(`--${name}=`))
    ?.slice(name.length + 3);
const portOf = (c: Container, port: string | number | undefined) =>
  typeof port === "number" ? port : c.ports?.find((p) => p.name === port)?.containerPort;
const clone = <T>(value: T): T => structuredClone(value);

function driverConfig(c: Container) {
  return configFromArgs(
    parseArgs(normalizeArgv((c.args ?? []).map((a) => expand(c, a))), driverArgs) as Record<
      string,
      unknown
    >,
    { MY_NODE_NAME: "node-1" },
  );
}

/** The node path behind a path in a container, through its hostPath volume mounts. */
function nodePath(spec: PodSpec, c: Container, path: string): string {
  const mount = (c.volumeMounts ?? [])
    .filter((m) => path === m.mountPath || path.startsWith(`${m.mountPath}/`))
    .sort((a, b) => b.mountPath.length - a.mountPath.length)[0];
  const host = spec.volumes?.find((v) => v.name === mount?.name)?.hostPath?.path;
  if (!mount || !host) throw new Error(`${path} is on no hostPath volume of ${c.name}`);
  return posix.join(host, path.slice(mount.mountPath.length));
}

/** The settings as the render holds them, read back from the driver's DaemonSet. */
function settingsOf(spec: PodSpec) {
  const registrar = container(spec, "node-driver-registrar");
  const driver = container(spec, "spiffe-csi-driver");
  const kubeletDir = envValue(registrar, "KUBELET_DIR") ?? "";
  const config = driverConfig(driver);
  return { kubeletDir, config, driver, registrar };
}

// ---- The rules. Each returns what breaks it; an empty list when the render follows it. ----

/** The driver, the registrar, the kubelet and the CSIDriver object agree on the sockets. */
function piecesAgree(docs: Doc[]): string[] {
  const problems: string[] = [];
  for (const set of driverSets(docs)) {
    const spec = set.spec.template.spec;
    const { kubeletDir, config, driver, registrar } = settingsOf(spec);
    const socket = nodePath(spec, driver, config.csiSocketPath);
    const expected = posix.join(kubeletDir, "plugins", config.pluginName, "csi.sock");
    if (socket !== expected) problems.push(`the driver's socket is ${socket}, not ${expected}`);
    if (nodePath(spec, registrar, flag(registrar, "csi-address") ?? "") !== socket)
      problems.push("the registrar's --csi-address is not the driver's socket");
    if (flag(registrar, "kubelet-registration-path") !== expected)
      problems.push("the registrar announces another socket to the kubelet");
    if (nodePath(spec, registrar, "/registration") !== posix.join(kubeletDir, "plugins_registry"))
      problems.push("the registrar's /registration is not the kubelet's plugins_registry");
    const csiDriver = docs.find((d) => d.kind === "CSIDriver");
    if (csiDriver?.metadata.name !== config.pluginName)
      problems.push(`no CSIDriver object named ${config.pluginName}`);
    for (const c of spec.containers) {
      const paths = (c.volumeMounts ?? []).map((m) => m.mountPath);
      if (new Set(paths).size !== paths.length) problems.push(`${c.name} mounts a path twice`);
    }
  }
  return problems;
}

/** The agent's socket directory comes from a hostPath above it, never an emptyDir. */
function agentDirFromNode(docs: Doc[]): string[] {
  return driverSets(docs).flatMap((set) => {
    const spec = set.spec.template.spec;
    const { driver, config } = settingsOf(spec);
    const mount = driver.volumeMounts?.find((m) => m.name === "spiffe-csi-agent-sockets");
    const volume = spec.volumes?.find((v) => v.name === mount?.name);
    if (!mount || !volume?.hostPath) return ["the agent's directory is not on a hostPath"];
    // File systems mounted inside it later (SPIFFEFS, --recursive-bind) must reach the driver.
    if (mount.mountPropagation !== "HostToContainer")
      return ["the agent's directory is not mounted with HostToContainer propagation"];
    if (!config.workloadApiSocketDir.startsWith(`${mount.mountPath}/`))
      return [`${config.workloadApiSocketDir} is not below the mounted ${mount.mountPath}`];
    if (nodePath(spec, driver, config.workloadApiSocketDir) !== config.workloadApiSocketDir)
      return ["the agent's directory is not at its node path in the driver"];
    return [];
  });
}

/** Only pods/ (Bidirectional), plugins/<name>/ and plugins_registry/ of the kubelet's root. */
function leastExposure(docs: Doc[]): string[] {
  return driverSets(docs).flatMap((set) => {
    const spec = set.spec.template.spec;
    const { kubeletDir, config, driver } = settingsOf(spec);
    const allowed = ["pods", `plugins/${config.pluginName}`, "plugins_registry"].map((p) =>
      posix.join(kubeletDir, p),
    );
    const problems = (spec.volumes ?? [])
      .filter((v) => v.name.startsWith("spiffe-csi-") && v.hostPath)
      .map((v) => v.hostPath?.path ?? "")
      .filter((p) => (p === kubeletDir || p.startsWith(`${kubeletDir}/`)) && !allowed.includes(p))
      .map((p) => `${p} of the kubelet's root is mounted`);
    const pods = driver.volumeMounts?.find((m) => m.mountPath === posix.join(kubeletDir, "pods"));
    if (
      pods?.mountPropagation !== "Bidirectional" ||
      nodePath(spec, driver, pods.mountPath) !== pods.mountPath
    )
      problems.push("the kubelet's pods/ is not at its node path with Bidirectional propagation");
    return problems;
  });
}

/** The Linux image goes to Linux nodes only. */
function linuxOnly(docs: Doc[]): string[] {
  return driverSets(docs)
    .filter((s) => s.spec.template.spec.nodeSelector?.["kubernetes.io/os"] !== "linux")
    .map((s) => `${s.metadata.name} has no kubernetes.io/os: linux node selector`);
}

/** Readiness is the driver's own serving (/healthz), never the agent's (/readyz). */
function readinessIsOwnServing(docs: Doc[]): string[] {
  return driverSets(docs).flatMap((set) => {
    const { driver, config } = settingsOf(set.spec.template.spec);
    const healthPort = Number(config.healthAddr?.split(":").pop());
    const problems: string[] = [];
    for (const [kind, probe] of [
      ["readiness", driver.readinessProbe],
      ["liveness", driver.livenessProbe],
    ] as const) {
      if (probe?.httpGet?.path !== "/healthz") problems.push(`the ${kind} probe is not /healthz`);
      if (portOf(driver, probe?.httpGet?.port) !== healthPort)
        problems.push(`the ${kind} probe is not on the health port ${healthPort}`);
    }
    return problems;
  });
}

/** The grace period covers the drain: --mount-timeout plus 1 s, plus a margin of 10 s. */
function graceCoversDrain(docs: Doc[]): string[] {
  return driverSets(docs).flatMap((set) => {
    const spec = set.spec.template.spec;
    const drain = settingsOf(spec).config.mountTimeoutMs / 1000 + 1;
    const grace = spec.terminationGracePeriodSeconds ?? 30;
    return grace >= drain + 10 ? [] : [`a grace of ${grace} s does not cover a ${drain} s drain`];
  });
}

/** The registrar has a liveness probe on its own /healthz. */
function registrarLiveness(docs: Doc[]): string[] {
  return driverSets(docs).flatMap((set) => {
    const { registrar } = settingsOf(set.spec.template.spec);
    const endpoint = Number(flag(registrar, "http-endpoint")?.split(":").pop());
    const probe = registrar.livenessProbe?.httpGet;
    return probe?.path === "/healthz" && portOf(registrar, probe.port) === endpoint
      ? []
      : ["the registrar has no liveness probe on its --http-endpoint's /healthz"];
  });
}

const CRITICAL = ["system-node-critical", "system-cluster-critical"];
/** A critical priority class outside kube-system comes with the ResourceQuota that admits it. */
function priorityAdmitted(docs: Doc[]): string[] {
  return driverSets(docs).flatMap((set) => {
    const priority = set.spec.template.spec.priorityClassName;
    if (!priority || !CRITICAL.includes(priority) || set.metadata.namespace === "kube-system")
      return [];
    const quota = docs.find(
      (d) =>
        d.kind === "ResourceQuota" &&
        d.metadata.namespace === set.metadata.namespace &&
        JSON.stringify(d.spec).includes(`"scopeName":"PriorityClass"`) &&
        JSON.stringify(d.spec).includes(`"${priority}"`),
    );
    return quota ? [] : [`${priority} in ${set.metadata.namespace} without a ResourceQuota for it`];
  });
}

/** The driver's kustomizations never hold the namespace: deleting them keeps it. */
function noNamespaceObject(docs: Doc[]): string[] {
  return docs.filter((d) => d.kind === "Namespace").map((d) => `Namespace ${d.metadata.name}`);
}

/** The settings object is kustomize's input only, never applied. */
function settingsNotApplied(docs: Doc[]): string[] {
  return docs
    .filter((d) => d.metadata.name === "spiffe-csi-driver-settings")
    .map(() => "the settings ConfigMap is in the output");
}

/** The namespace admits privileged pods. */
function podSecurityAdmits(docs: Doc[]): string[] {
  const ns = docs.find((d) => d.kind === "Namespace");
  return ns?.metadata.labels?.["pod-security.kubernetes.io/enforce"] === "privileged"
    ? []
    : ["the namespace does not enforce the privileged pod-security level"];
}

/**
 * Ingress to the driver's pods: only the health port, only from labelled scrapers in labelled
 * namespaces (a pod can label itself; only the operator labels a namespace).
 */
function healthPortPolicy(docs: Doc[]): string[] {
  return driverSets(docs).flatMap((set) => {
    const labels = set.spec.template.metadata.labels;
    const { driver, config } = settingsOf(set.spec.template.spec);
    const healthPort = Number(config.healthAddr?.split(":").pop());
    type Rule = {
      from?: {
        podSelector?: { matchLabels?: object };
        namespaceSelector?: { matchLabels?: object };
      }[];
      ports?: { port: string | number }[];
    };
    const policy = docs.find((d) => {
      const spec = d.spec as { podSelector?: { matchLabels?: Record<string, string> } };
      return (
        d.kind === "NetworkPolicy" &&
        d.metadata.namespace === set.metadata.namespace &&
        Object.entries(spec.podSelector?.matchLabels ?? {}).every(([k, v]) => labels[k] === v)
      );
    }) as (Doc & { spec: { policyTypes: string[]; ingress?: Rule[] } }) | undefined;
    if (!policy?.spec.policyTypes.includes("Ingress"))
      return [`no NetworkPolicy isolates ${set.metadata.name}'s pods`];
    return (policy.spec.ingress ?? []).flatMap((rule) => {
      const ports = (rule.ports ?? []).map((p) => portOf(driver, p.port));
      const problems: string[] = [];
      if (ports.length === 0 || ports.some((p) => p !== healthPort))
        problems.push("an ingress rule admits more than the health port");
      if (
        !rule.from?.length ||
        rule.from.some((f) => !Object.keys(f.podSelector?.matchLabels ?? {}).length)
      )
        problems.push("an ingress rule admits unlabelled peers");
      if (rule.from?.some((f) => !Object.keys(f.namespaceSelector?.matchLabels ?? {}).length))
        problems.push("an ingress rule admits peers from any namespace");
      return problems;
    });
  });
}

/** OpenShift: an SCC admitting the pods, granted to their service account; the CSIDriver label. */
function openshiftAdmits(docs: Doc[]): string[] {
  const problems: string[] = [];
  const scc = docs.find((d) => d.kind === "SecurityContextConstraints") as
    | (Doc & {
        allowPrivilegedContainer?: boolean;
        allowHostDirVolumePlugin?: boolean;
        volumes?: string[];
        readOnlyRootFilesystem?: boolean;
      })
    | undefined;
  if (scc?.apiVersion !== "security.openshift.io/v1") return ["no SecurityContextConstraints"];
  if (!scc.allowPrivilegedContainer) problems.push("the SCC refuses privileged containers");
  if (!scc.allowHostDirVolumePlugin || !scc.volumes?.includes("hostPath"))
    problems.push("the SCC refuses hostPath volumes");
  for (const set of driverSets(docs)) {
    const spec = set.spec.template.spec;
    if (
      scc.readOnlyRootFilesystem &&
      spec.containers.some((c) => !c.securityContext?.readOnlyRootFilesystem)
    )
      problems.push("a container's root file system is writable, which the SCC refuses");
    const roles = docs
      .filter((d) => d.kind === "ClusterRole")
      .filter((d) =>
        (
          d.rules as {
            apiGroups: string[];
            resources: string[];
            resourceNames?: string[];
            verbs: string[];
          }[]
        ).some(
          (r) =>
            r.apiGroups.includes("security.openshift.io") &&
            r.resources.includes("securitycontextconstraints") &&
            r.resourceNames?.includes(scc.metadata.name) &&
            r.verbs.includes("use"),
        ),
      )
      .map((d) => d.metadata.name);
    const granted = docs.some((d) => {
      const binding = d as Doc & {
        roleRef: { name: string };
        subjects?: { kind: string; name: string; namespace?: string }[];
      };
      return (
        (d.kind === "RoleBinding" || d.kind === "ClusterRoleBinding") &&
        roles.includes(binding.roleRef.name) &&
        (d.kind === "ClusterRoleBinding" || d.metadata.namespace === set.metadata.namespace) &&
        binding.subjects?.some(
          (s) =>
            s.kind === "ServiceAccount" &&
            s.name === spec.serviceAccountName &&
            s.namespace === set.metadata.namespace,
        )
      );
    });
    if (!granted) problems.push(`the SCC is not granted to ${spec.serviceAccountName}`);
  }
  const csiDriver = docs.find((d) => d.kind === "CSIDriver");
  if (
    csiDriver?.metadata.labels?.["security.openshift.io/csi-ephemeral-volume-profile"] !==
    "restricted"
  )
    problems.push("the CSIDriver object lacks the restricted ephemeral-volume profile label");
  return problems;
}

/** The example workload finds SPIRE's socket where the SDKs look (SPIFFE_ENDPOINT_SOCKET). */
function workloadFindsSocket(docs: Doc[]): string[] {
  const pod = docs.find((d) => d.kind === "Pod") as Doc & { spec: PodSpec };
  const c = pod.spec.containers[0] as Container;
  const volume = pod.spec.volumes?.find((v) => v.csi);
  const mount = c.volumeMounts?.find((m) => m.name === volume?.name);
  const socket = posix.join(mount?.mountPath ?? "?", "spire-agent.sock");
  const problems: string[] = [];
  if (envValue(c, "SPIFFE_ENDPOINT_SOCKET") !== `unix://${socket}`)
    problems.push(`SPIFFE_ENDPOINT_SOCKET is not unix://${socket}`);
  if (!c.args?.includes(socket)) problems.push(`the client is not pointed at ${socket}`);
  if (!volume?.csi?.readOnly || !mount?.readOnly) problems.push("the volume is not read-only");
  if (volume?.csi?.driver !== "csi.spiffe.io") problems.push("the volume names another driver");
  return problems;
}

const rules = {
  piecesAgree,
  agentDirFromNode,
  leastExposure,
  linuxOnly,
  readinessIsOwnServing,
  graceCoversDrain,
  registrarLiveness,
  priorityAdmitted,
  noNamespaceObject,
  settingsNotApplied,
  healthPortPolicy,
};
const driverRenders = {
  standalone: renders.standalone,
  agent: renders.agent,
  overlay: renders.overlay,
  openshift: renders.openshift,
  nodeCritical: renders.nodeCritical,
};

describe("every rendered manifest validates against the Kubernetes API schema", () => {
  const all = [...Object.entries(renders), ["workload.yaml", workloadPod] as const];
  test.each(all)("%s", (_, docs) => {
    for (const doc of docs) {
      if (doc.kind === "SecurityContextConstraints") continue; // OpenShift's: openshiftAdmits
      const Model = models[`${doc.apiVersion}/${doc.kind}`];
      expect(Model, `${doc.apiVersion}/${doc.kind} has a schema`).toBeDefined();
      expect(() =>
        new (Model as new (data: Doc) => { validate(): void })(doc).validate(),
      ).not.toThrow();
    }
  });

  test("a broken manifest does not validate (the check can fail)", () => {
    const broken = clone(driverSets(renders.standalone)[0]) as Workload;
    (broken.spec.template.spec as unknown as { containers: string }).containers = "nope";
    expect(() => new DaemonSet(broken as never).validate()).toThrow();
  });
});

describe("every render follows the rules", () => {
  // The agent's pods are the agent's: a NetworkPolicy for them is the agent deployment's choice
  // (see the README: Deployment, the health port).
  const notFor: Record<string, string[]> = { healthPortPolicy: ["agent"] };
  for (const [name, rule] of Object.entries(rules)) {
    const applicable = Object.entries(driverRenders).filter(
      ([render]) => !notFor[name]?.includes(render),
    );
    test.each(applicable)(`${name}: %s`, (_, docs) => {
      expect(driverSets(docs).length).toBe(1);
      expect(rule(docs)).toEqual([]);
    });
  }
  test("podSecurityAdmits: the namespace kustomization", () => {
    expect(podSecurityAdmits(renders.namespace)).toEqual([]);
  });
  test("openshiftAdmits: the OpenShift variant", () => {
    expect(openshiftAdmits(renders.openshift)).toEqual([]);
  });
  test("workloadFindsSocket: the example workload", () => {
    expect(workloadFindsSocket(workloadPod)).toEqual([]);
  });
  test("the node-critical component brings its priority class", () => {
    expect(driverSets(renders.nodeCritical)[0]?.spec.template.spec.priorityClassName).toBe(
      "system-node-critical",
    );
    expect(driverSets(renders.standalone)[0]?.spec.template.spec.priorityClassName).toBeUndefined();
  });
});

describe("each rule fails on a render that breaks it", () => {
  const standalone = () => clone(renders.standalone);
  const spec = (docs: Doc[]) => (driverSets(docs)[0] as Workload).spec.template.spec;
  const driverOf = (docs: Doc[]) => container(spec(docs), "spiffe-csi-driver");
  const cases: [string, (docs: Doc[]) => string[], (docs: Doc[]) => void, string][] = [
    [
      "piecesAgree",
      piecesAgree,
      (d) => {
        const env = container(spec(d), "node-driver-registrar").env?.find(
          (e) => e.name === "PLUGIN_NAME",
        );
        if (env) env.value = "other.example.org";
      },
      "announces another socket",
    ],
    [
      "agentDirFromNode",
      agentDirFromNode,
      (d) => {
        (spec(d).volumes?.find((v) => v.name === "spiffe-csi-agent-sockets") as Volume).hostPath =
          undefined;
        (spec(d).volumes?.find((v) => v.name === "spiffe-csi-agent-sockets") as Volume).emptyDir =
          {};
      },
      "not on a hostPath",
    ],
    [
      "agentDirFromNode",
      agentDirFromNode,
      (d) => {
        const mount = driverOf(d).volumeMounts?.find((m) => m.name === "spiffe-csi-agent-sockets");
        if (mount) mount.mountPropagation = undefined;
      },
      "HostToContainer",
    ],
    [
      "leastExposure",
      leastExposure,
      (d) => {
        (spec(d).volumes?.find((v) => v.name === "spiffe-csi-registration") as Volume).hostPath = {
          path: "/var/lib/kubelet",
        };
      },
      "/var/lib/kubelet of the kubelet's root is mounted",
    ],
    [
      "linuxOnly",
      linuxOnly,
      (d) => {
        spec(d).nodeSelector = {};
      },
      "kubernetes.io/os: linux",
    ],
    [
      "readinessIsOwnServing",
      readinessIsOwnServing,
      (d) => {
        (driverOf(d).readinessProbe as { httpGet: { path: string } }).httpGet.path = "/readyz";
      },
      "readiness probe is not /healthz",
    ],
    [
      "graceCoversDrain",
      graceCoversDrain,
      (d) => {
        spec(d).terminationGracePeriodSeconds = undefined;
      },
      "a grace of 30 s",
    ],
    [
      "registrarLiveness",
      registrarLiveness,
      (d) => {
        container(spec(d), "node-driver-registrar").livenessProbe = undefined;
      },
      "no liveness probe",
    ],
    [
      "priorityAdmitted",
      priorityAdmitted,
      (d) => {
        spec(d).priorityClassName = "system-node-critical";
      },
      "without a ResourceQuota",
    ],
    [
      "noNamespaceObject",
      noNamespaceObject,
      (d) => {
        d.push(...clone(renders.namespace));
      },
      "Namespace spire",
    ],
    [
      "settingsNotApplied",
      settingsNotApplied,
      (d) => {
        d.push({
          apiVersion: "v1",
          kind: "ConfigMap",
          metadata: { name: "spiffe-csi-driver-settings" },
        });
      },
      "settings ConfigMap",
    ],
    [
      "healthPortPolicy",
      healthPortPolicy,
      (d) => {
        const policy = d.find((x) => x.kind === "NetworkPolicy") as Doc & {
          spec: { ingress: object[] };
        };
        policy.spec.ingress.push({});
      },
      "admits more than the health port",
    ],
    [
      "healthPortPolicy",
      healthPortPolicy,
      (d) => {
        const policy = d.find((x) => x.kind === "NetworkPolicy") as Doc & {
          spec: { ingress: { from: { namespaceSelector?: object }[] }[] };
        };
        for (const peer of policy.spec.ingress.flatMap((rule) => rule.from)) {
          peer.namespaceSelector = {};
        }
      },
      "admits peers from any namespace",
    ],
    [
      "healthPortPolicy",
      healthPortPolicy,
      (d) => {
        d.splice(
          d.findIndex((x) => x.kind === "NetworkPolicy"),
          1,
        );
      },
      "no NetworkPolicy isolates",
    ],
  ];
  test.each(cases)("%s", (_, rule, breakIt, message) => {
    const docs = standalone();
    breakIt(docs);
    expect(rule(docs).join("\n")).toContain(message);
  });

  test("podSecurityAdmits", () => {
    const docs = clone(renders.namespace);
    (docs[0]?.metadata.labels as Record<string, string>)["pod-security.kubernetes.io/enforce"] =
      "baseline";
    expect(podSecurityAdmits(docs).join()).toContain("privileged");
  });

  test("openshiftAdmits", () => {
    const noBinding = clone(renders.openshift).filter((d) => d.kind !== "RoleBinding");
    expect(openshiftAdmits(noBinding).join()).toContain("not granted to spiffe-csi-driver");
    const noLabel = clone(renders.openshift);
    (noLabel.find((d) => d.kind === "CSIDriver") as Doc).metadata.labels = {};
    expect(openshiftAdmits(noLabel).join()).toContain("profile label");
    expect(openshiftAdmits(renders.standalone).join()).toContain("no SecurityContextConstraints");
  });

  test("workloadFindsSocket", () => {
    const docs = clone(workloadPod);
    const c = (docs[0] as Doc & { spec: PodSpec }).spec.containers[0] as Container;
    (c.env?.[0] as Env).value = "unix:///spiffe-workload-api/agent.sock";
    expect(workloadFindsSocket(docs).join()).toContain("SPIFFE_ENDPOINT_SOCKET");
  });
});

/** Every leaf of a document as "path = value", for comparing renders. */
function leaves(value: unknown, path = ""): Map<string, string> {
  const out = new Map<string, string>();
  if (value !== null && typeof value === "object") {
    for (const [key, child] of Object.entries(value)) {
      const segment = Array.isArray(value)
        ? `[${(child as { name?: string })?.name ?? key}]`
        : `.${key}`;
      for (const [p, v] of leaves(child, `${path}${segment}`)) out.set(p, v);
    }
  } else {
    out.set(path, JSON.stringify(value));
  }
  return out;
}

function diff(before: Doc[], after: Doc[]): string[] {
  const byKind = (docs: Doc[]) => new Map(docs.map((d) => [d.kind, d]));
  const a = byKind(before);
  const b = byKind(after);
  expect([...b.keys()].sort()).toEqual([...a.keys()].sort());
  const changes: string[] = [];
  for (const [kind, doc] of a) {
    const left = leaves(doc);
    const right = leaves(b.get(kind));
    for (const key of new Set([...left.keys(), ...right.keys()])) {
      if (left.get(key) !== right.get(key))
        changes.push(`${kind}${key} = ${right.get(key) ?? "(removed)"}`);
    }
  }
  return changes.sort();
}

describe("an overlay changes every setting, everywhere it belongs and nowhere else", () => {
  test("the overlay's render differs from the standalone's in exactly these places", () => {
    const root = "/var/lib/k0s/kubelet";
    const name = "workload-api.example.org";
    const ds = "DaemonSet.spec.template.spec";
    const driver = `${ds}.containers[spiffe-csi-driver]`;
    const registrar = `${ds}.containers[node-driver-registrar]`;
    expect(diff(renders.standalone, renders.overlay)).toEqual(
      [
        `CSIDriver.metadata.name = "${name}"`,
        `${driver}.env[PLUGIN_NAME].value = "${name}"`,
        `${driver}.env[WORKLOAD_API_SOCKET_DIR].value = "/var/run/spire-agent/public"`,
        `${driver}.image = "registry.example.org/platform/spiffe-csi-driver:9.9.9"`,
        `${driver}.resources.limits.memory = "512Mi"`,
        `${driver}.resources.requests.cpu = "50m"`,
        `${driver}.resources.requests.memory = "96Mi"`,
        `${driver}.volumeMounts[spiffe-csi-agent-sockets].mountPath = "/var/run/spire-agent"`,
        `${driver}.volumeMounts[spiffe-csi-kubelet-pods].mountPath = "${root}/pods"`,
        `${registrar}.env[KUBELET_DIR].value = "${root}"`,
        `${registrar}.env[PLUGIN_NAME].value = "${name}"`,
        `${ds}.nodeSelector.node.example.org/spiffe = "true"`,
        `${ds}.priorityClassName = "spiffe-node"`,
        `${ds}.tolerations[0].effect = "NoSchedule"`,
        `${ds}.tolerations[0].key = "node-role.kubernetes.io/control-plane"`,
        `${ds}.volumes[spiffe-csi-agent-sockets].hostPath.path = "/var/run/spire-agent"`,
        `${ds}.volumes[spiffe-csi-kubelet-pods].hostPath.path = "${root}/pods"`,
        `${ds}.volumes[spiffe-csi-plugin].hostPath.path = "${root}/plugins/${name}"`,
        `${ds}.volumes[spiffe-csi-registration].hostPath.path = "${root}/plugins_registry"`,
      ].sort(),
    );
  });

  test("the old kubelet root, plugin name and agent directory are gone from the overlay", () => {
    const text = JSON.stringify(renders.overlay);
    for (const old of ["/var/lib/kubelet", "csi.spiffe.io", "/run/spire"]) {
      expect(text).not.toContain(`"${old}`);
    }
    const { kubeletDir, config } = settingsOf(spec(renders.overlay));
    expect(kubeletDir).toBe("/var/lib/k0s/kubelet");
    expect(config.pluginName).toBe("workload-api.example.org");
    expect(config.workloadApiSocketDir).toBe("/var/run/spire-agent/public");
  });

  const spec = (docs: Doc[]) => (driverSets(docs)[0] as Workload).spec.template.spec;
});

describe("in the agent's DaemonSet", () => {
  const standalone = driverSets(renders.standalone)[0] as Workload;
  const agentSet = driverSets(renders.agent)[0] as Workload;
  const original = exampleAgent.find((d) => d.kind === "DaemonSet") as Workload;

  test("the component adds the standalone DaemonSet's containers and volumes, unchanged", () => {
    for (const name of ["spiffe-csi-driver", "node-driver-registrar"]) {
      expect(container(agentSet.spec.template.spec, name)).toEqual(
        container(standalone.spec.template.spec, name),
      );
    }
    const ours = (s: Workload) =>
      (s.spec.template.spec.volumes ?? []).filter((v) => v.name.startsWith("spiffe-csi-"));
    expect(ours(agentSet)).toEqual(ours(standalone));
    expect(agentSet.spec.template.spec.terminationGracePeriodSeconds).toBe(
      standalone.spec.template.spec.terminationGracePeriodSeconds as number,
    );
  });

  test("the agent's own containers and volumes are left as they were", () => {
    const agentSpec = agentSet.spec.template.spec;
    const originalSpec = original.spec.template.spec;
    expect(container(agentSpec, "spire-agent")).toEqual(container(originalSpec, "spire-agent"));
    for (const volume of originalSpec.volumes ?? []) {
      expect(agentSpec.volumes?.find((v) => v.name === volume.name)).toEqual(volume);
    }
    expect(agentSpec.containers.length).toBe(originalSpec.containers.length + 2);
  });

  test("the driver serves the directory the agent puts spire-agent.sock in", () => {
    const config = one<Doc & { data: Record<string, string> }>(exampleAgent, "ConfigMap").data[
      "agent.conf"
    ];
    const socketPath = /socket_path = "(.*)"/.exec(config ?? "")?.[1] ?? "";
    expect(posix.basename(socketPath)).toBe("spire-agent.sock");
    const agentSpec = agentSet.spec.template.spec;
    const agent = container(agentSpec, "spire-agent");
    const { driver, config: driverSettings } = settingsOf(agentSpec);
    const agentNodeDir = nodePath(agentSpec, agent, posix.dirname(socketPath));
    expect(nodePath(agentSpec, driver, driverSettings.workloadApiSocketDir)).toBe(agentNodeDir);
  });
});

describe("the systemd unit", () => {
  const unit = readFileSync(join(repo, "deploy", "systemd", "spiffe-csi-driver.service"), "utf8");
  const environment = Object.fromEntries(
    [...unit.matchAll(/^Environment=(\w+)=(.*)$/gm)].map((m) => [m[1] as string, m[2] as string]),
  );
  const execStart = /^ExecStart=((?:[^\n]*\\\n)*[^\n]*)$/m.exec(unit)?.[1] ?? "";
  const argv = execStart
    .replaceAll("\\\n", " ")
    .trim()
    .split(/\s+/)
    .map((word) =>
      word
        .replace(/\$\{(\w+)\}/g, (_, name: string) => environment[name] ?? "")
        .replace("%H", "node-1"),
    );

  test("runs the binary with flags it accepts, registering itself with the kubelet", () => {
    expect(argv[0]).toBe("/usr/local/bin/spiffe-csi-driver");
    const config = configFromArgs(
      parseArgs(normalizeArgv(argv.slice(1)), driverArgs) as Record<string, unknown>,
      {},
    );
    expect(config.kubeletRegistration).toEqual({
      dir: "/var/lib/kubelet/plugins_registry",
      endpoint: "/var/lib/kubelet/plugins/csi.spiffe.io/csi.sock",
    });
    expect(config.csiSocketPath).toBe("/var/lib/kubelet/plugins/csi.spiffe.io/csi.sock");
  });

  test("restarts on failure and starts after the agent", () => {
    expect(unit).toMatch(/^Restart=on-failure$/m);
    expect(unit).toMatch(/^After=spire-agent\.service$/m);
  });
});

describe("versions", () => {
  const version = (
    JSON.parse(readFileSync(join(repo, "package.json"), "utf8")) as { version: string }
  ).version;

  test("the Containerfile's version label and the driver's image tag are the package version", () => {
    const containerfile = readFileSync(join(repo, "Containerfile"), "utf8");
    expect(/^ARG VERSION=(.*)$/m.exec(containerfile)?.[1]).toBe(version);
    for (const docs of [renders.standalone, renders.agent]) {
      const driver = container(
        (driverSets(docs)[0] as Workload).spec.template.spec,
        "spiffe-csi-driver",
      );
      expect(driver.image).toBe(`spiffe-csi-driver:${version}`);
    }
  });
});
