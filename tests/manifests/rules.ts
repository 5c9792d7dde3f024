// The deployment's rules, shared by the kustomize manifests' test and the Helm chart's. Each rule
// is a function that lists what breaks it in a render (an empty list when the render follows it);
// the tests show each one passing on every render and failing on a render broken on purpose.
// Renders come from the real kubectl (kustomize) and helm that `npm ci` installs.
import { expect } from "bun:test";
import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, posix, resolve } from "node:path";
import {
  PodMonitor,
  PrometheusRule,
  ServiceMonitor,
} from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1";
import { parseArgs } from "citty";
import {
  ValidatingAdmissionPolicy,
  ValidatingAdmissionPolicyBinding,
} from "kubernetes-models/admissionregistration.k8s.io/v1";
import { DaemonSet } from "kubernetes-models/apps/v1";
import { NetworkPolicy } from "kubernetes-models/networking.k8s.io/v1";
import {
  ClusterRole,
  ClusterRoleBinding,
  RoleBinding,
} from "kubernetes-models/rbac.authorization.k8s.io/v1";
import { CSIDriver } from "kubernetes-models/storage.k8s.io/v1";
import {
  ConfigMap,
  Namespace,
  Pod,
  ResourceQuota,
  Service,
  ServiceAccount,
} from "kubernetes-models/v1";
import { parseAllDocuments } from "yaml";
import { toolPath } from "../../scripts/kube-tools.ts";
import { normalizeArgv } from "../../src/cli/argv.ts";
import { configFromArgs, args as driverArgs, parsedArgs } from "../../src/cli/config.ts";

export type Doc = {
  apiVersion: string;
  kind: string;
  metadata: {
    name: string;
    namespace?: string;
    labels?: Record<string, string>;
    annotations?: Record<string, string>;
  };
} & Record<string, unknown>;
export type Env = {
  name: string;
  value?: string;
  valueFrom?: { fieldRef?: { fieldPath: string } };
};
export type Mount = {
  name: string;
  mountPath: string;
  mountPropagation?: string;
  readOnly?: boolean;
};
export type Probe = { httpGet?: { path: string; port: string | number } };
export type Container = {
  name: string;
  image?: string;
  command?: string[];
  args?: string[];
  env?: Env[];
  ports?: { name?: string; containerPort: number }[];
  volumeMounts?: Mount[];
  livenessProbe?: Probe;
  readinessProbe?: Probe;
  resources?: unknown;
  securityContext?: Record<string, unknown>;
};
export type Volume = {
  name: string;
  hostPath?: { path: string; type?: string };
  emptyDir?: object;
  csi?: { driver: string; readOnly?: boolean };
};
export type PodSpec = {
  containers: Container[];
  volumes?: Volume[];
  nodeSelector?: Record<string, string>;
  tolerations?: unknown[];
  priorityClassName?: string;
  serviceAccountName?: string;
  terminationGracePeriodSeconds?: number;
  automountServiceAccountToken?: boolean;
  hostNetwork?: boolean;
};
export type Workload = Doc & {
  spec: { template: { metadata: { labels: Record<string, string> }; spec: PodSpec } };
};

export function parse(text: string): Doc[] {
  return parseAllDocuments(text)
    .filter((doc) => doc.contents !== null)
    .map((doc) => {
      expect(doc.errors).toEqual([]);
      return doc.toJS() as Doc;
    });
}

function run(argv: string[]): { code: number; stdout: string; stderr: string } {
  const result = Bun.spawnSync(argv, { stdout: "pipe", stderr: "pipe" });
  return {
    code: result.exitCode ?? 1,
    stdout: result.stdout.toString(),
    stderr: result.stderr.toString(),
  };
}

/** `kubectl kustomize dir`, parsed. */
export function kustomize(dir: string): Doc[] {
  const result = run([toolPath("kubectl"), "kustomize", dir]);
  if (result.code !== 0) throw new Error(`kubectl kustomize ${dir}: ${result.stderr}`);
  return parse(result.stdout);
}

/** `helm ARGS...`, with its exit code and output. */
export function helm(...args: string[]) {
  return run([toolPath("helm"), ...args]);
}

/** `helm template ARGS...`, parsed; fails on a refused render. */
export function helmTemplate(...args: string[]): Doc[] {
  const result = helm("template", ...args);
  if (result.code !== 0) throw new Error(`helm template ${args.join(" ")}: ${result.stderr}`);
  return parse(result.stdout);
}

export const repo = resolve(import.meta.dir, "../..");
export const chartDir = join(repo, "deploy", "helm", "spiffe-csi-driver");
const parentFixture = join(repo, "tests", "fixtures", "spire-parent");

/** A scratch directory for renders, under the system's temporary directory. */
export const scratch = mkdtempSync(join(tmpdir(), "spiffe-csi-chart-"));
process.on("exit", () => rmSync(scratch, { recursive: true, force: true }));
let valuesFiles = 0;
/** A values file holding `values` (JSON is YAML). */
export function valuesFile(values: object): string {
  const path = join(scratch, `values-${valuesFiles++}.json`);
  writeFileSync(path, JSON.stringify(values));
  return path;
}

/** The chart rendered as release `spiffe-csi-driver` in namespace spire, with `values`. */
export function renderChart(values: object, ...args: string[]): Doc[] {
  return helmTemplate(
    "spiffe-csi-driver",
    chartDir,
    "-n",
    "spire",
    "-f",
    valuesFile(values),
    ...args,
  );
}

let parent: string | undefined;
/**
 * The fixture laid out as SPIRE's chart, with this chart as its spiffe-csi-driver subchart and
 * upstream alias (helm dependency build packs it into a copy's charts/).
 */
export function parentChart(): string {
  if (parent) return parent;
  const dir = join(scratch, "spire");
  cpSync(parentFixture, dir, { recursive: true });
  const manifest = join(dir, "Chart.yaml");
  writeFileSync(
    manifest,
    readFileSync(manifest, "utf8").replaceAll(
      "file://../../../deploy/helm/spiffe-csi-driver",
      `file://${chartDir}`,
    ),
  );
  const built = helm("dependency", "build", dir);
  if (built.code !== 0) throw new Error(`helm dependency build: ${built.stderr}`);
  parent = dir;
  return dir;
}

/** The driver's arguments in the chart's DaemonSet with its defaults, for an agent directory. */
export function chartDefaultArgs(workloadApiSocketDir: string): string[] {
  return [
    `--workload-api-socket-dir=${workloadApiSocketDir}`,
    "--plugin-name=csi.spiffe.io",
    "--csi-socket-path=/spiffe-csi/csi.sock",
    "--health-addr=:9808",
    "--log-level=info",
    "--log-format=text",
    "--mount-timeout=30",
    "--selinux-label=auto",
    "--selinux-context=system_u:object_r:container_file_t:s0",
  ];
}

/** The parent chart rendered as release spire in namespace spire-mgmt (SPIRE's README's). */
export function renderParent(valuesFiles: string[], ...args: string[]): Doc[] {
  const dir = parentChart();
  return helmTemplate(
    "spire",
    dir,
    "-n",
    "spire-mgmt",
    ...valuesFiles.flatMap((f) => ["-f", join(dir, "values", f)]),
    ...args,
  );
}

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
  "admissionregistration.k8s.io/v1/ValidatingAdmissionPolicy": ValidatingAdmissionPolicy,
  "admissionregistration.k8s.io/v1/ValidatingAdmissionPolicyBinding":
    ValidatingAdmissionPolicyBinding,
  // The monitoring component's and the chart's telemetry objects.
  "v1/Service": Service,
  "monitoring.coreos.com/v1/PrometheusRule": PrometheusRule,
  "monitoring.coreos.com/v1/PodMonitor": PodMonitor,
  "monitoring.coreos.com/v1/ServiceMonitor": ServiceMonitor,
};

/**
 * Validates every object against its Kubernetes API schema, or the Prometheus Operator's for its
 * objects (OpenShift's SCCs have no schema package: openshiftAdmits checks the fields that
 * matter).
 */
export function expectValid(docs: Doc[]): void {
  for (const doc of docs) {
    if (doc.kind === "SecurityContextConstraints") continue;
    const Model = models[`${doc.apiVersion}/${doc.kind}`];
    expect(Model, `${doc.apiVersion}/${doc.kind} has a schema`).toBeDefined();
    expect(() =>
      new (Model as new (data: Doc) => { validate(): void })(doc).validate(),
    ).not.toThrow();
  }
}

export const driverSets = (docs: Doc[]) =>
  docs.filter(
    (d): d is Workload =>
      d.kind === "DaemonSet" &&
      (d as Workload).spec.template.spec.containers.some((c) => c.name === "spiffe-csi-driver"),
  );
export const one = <T extends Doc>(docs: Doc[], kind: string) => {
  const found = docs.filter((d) => d.kind === kind);
  expect(found.length).toBe(1);
  return found[0] as T;
};
export const container = (spec: PodSpec, name: string) =>
  spec.containers.find((c) => c.name === name) as Container;
export const envValue = (c: Container, name: string) => c.env?.find((e) => e.name === name)?.value;
/** Kubernetes' expansion of $(VAR) in a container's arguments, from its env. */
export const expand = (c: Container, arg: string) =>
  arg.replace(/\$\((\w+)\)/g, (whole, name: string) => envValue(c, name) ?? whole);
export const flag = (c: Container, name: string) =>
  c.args
    ?.map((a) => expand(c, a))
    .find((a) => a.startsWith(`--${name}=`))
    ?.slice(name.length + 3);
export const portOf = (c: Container, port: string | number | undefined) =>
  typeof port === "number" ? port : c.ports?.find((p) => p.name === port)?.containerPort;
export const clone = <T>(value: T): T => structuredClone(value);

/** The driver's configuration from a container's arguments, as the binary reads them. */
export function driverConfig(c: Container) {
  const argv = normalizeArgv((c.args ?? []).map((a) => expand(c, a)));
  return configFromArgs(parsedArgs(parseArgs(argv, driverArgs), argv), {
    MY_NODE_NAME: "node-1",
  });
}

/** The node path behind a path in a container, through its hostPath volume mounts. */
export function nodePath(spec: PodSpec, c: Container, path: string): string {
  const mount = (c.volumeMounts ?? [])
    .filter((m) => path === m.mountPath || path.startsWith(`${m.mountPath}/`))
    .sort((a, b) => b.mountPath.length - a.mountPath.length)[0];
  const host = spec.volumes?.find((v) => v.name === mount?.name)?.hostPath?.path;
  if (!mount || !host) throw new Error(`${path} is on no hostPath volume of ${c.name}`);
  return posix.join(host, path.slice(mount.mountPath.length));
}

/**
 * The settings as the render holds them, read back from the driver's DaemonSet: the kubelet's
 * root is what the registrar announces, less plugins/<name>/csi.sock.
 */
export function settingsOf(spec: PodSpec) {
  const registrar = container(spec, "node-driver-registrar");
  const driver = container(spec, "spiffe-csi-driver");
  const config = driverConfig(driver);
  const registration = flag(registrar, "kubelet-registration-path") ?? "";
  const tail = `/plugins/${config.pluginName}/csi.sock`;
  const kubeletDir = registration.endsWith(tail) ? registration.slice(0, -tail.length) : "";
  return { kubeletDir, config, driver, registrar };
}

// ---- The rules. Each returns what breaks it; an empty list when the render follows it. ----

/** The driver, the registrar, the kubelet and the CSIDriver object agree on the sockets. */
export function piecesAgree(docs: Doc[]): string[] {
  const problems: string[] = [];
  for (const set of driverSets(docs)) {
    const spec = set.spec.template.spec;
    const { kubeletDir, config, driver, registrar } = settingsOf(spec);
    if (!kubeletDir) {
      problems.push("the registrar announces another socket to the kubelet");
      continue;
    }
    const socket = nodePath(spec, driver, config.csiSocketPath);
    const expected = posix.join(kubeletDir, "plugins", config.pluginName, "csi.sock");
    if (socket !== expected) problems.push(`the driver's socket is ${socket}, not ${expected}`);
    if (nodePath(spec, registrar, flag(registrar, "csi-address") ?? "") !== socket)
      problems.push("the registrar's --csi-address is not the driver's socket");
    if (nodePath(spec, registrar, "/registration") !== posix.join(kubeletDir, "plugins_registry"))
      problems.push("the registrar's /registration is not the kubelet's plugins_registry");
    if (!docs.some((d) => d.kind === "CSIDriver" && d.metadata.name === config.pluginName))
      problems.push(`no CSIDriver object named ${config.pluginName}`);
    for (const c of spec.containers) {
      const paths = (c.volumeMounts ?? []).map((m) => m.mountPath);
      if (new Set(paths).size !== paths.length) problems.push(`${c.name} mounts a path twice`);
    }
  }
  return problems;
}

/** One plugin name: the driver's, its plugin directory's, the registrar's, the CSIDriver's. */
export function onePluginName(docs: Doc[]): string[] {
  return driverSets(docs).flatMap((set) => {
    const spec = set.spec.template.spec;
    const { config, registrar } = settingsOf(spec);
    const pluginDir = spec.volumes?.find((v) => v.name === "spiffe-csi-plugin")?.hostPath?.path;
    const registration = flag(registrar, "kubelet-registration-path") ?? "";
    const names = new Set([
      config.pluginName,
      posix.basename(pluginDir ?? ""),
      posix.basename(posix.dirname(registration)),
    ]);
    if (names.size !== 1) return [`plugin names differ: ${[...names].join(", ")}`];
    return docs.some((d) => d.kind === "CSIDriver" && d.metadata.name === config.pluginName)
      ? []
      : [`no CSIDriver object named ${config.pluginName}`];
  });
}

/** One kubelet root behind the pods directory, the plugin directory and the registration. */
export function oneKubeletRoot(docs: Doc[]): string[] {
  return driverSets(docs).flatMap((set) => {
    const spec = set.spec.template.spec;
    const { config, driver, registrar } = settingsOf(spec);
    const host = (name: string) => spec.volumes?.find((v) => v.name === name)?.hostPath?.path;
    const strip = (path: string | undefined, tail: string) =>
      path?.endsWith(tail) ? path.slice(0, -tail.length) : `${path} (not ending in ${tail})`;
    const pods = driver.volumeMounts?.find((m) => m.name === "spiffe-csi-kubelet-pods");
    const roots = new Set([
      strip(host("spiffe-csi-kubelet-pods"), "/pods"),
      strip(pods?.mountPath, "/pods"),
      strip(host("spiffe-csi-plugin"), `/plugins/${config.pluginName}`),
      strip(host("spiffe-csi-registration"), "/plugins_registry"),
      strip(flag(registrar, "kubelet-registration-path"), `/plugins/${config.pluginName}/csi.sock`),
    ]);
    return roots.size === 1 ? [] : [`more than one kubelet root: ${[...roots].join(", ")}`];
  });
}

/** The ports of a pod are distinct: the driver's health port is not the registrar's. */
export function portsDistinct(docs: Doc[]): string[] {
  return driverSets(docs).flatMap((set) => {
    const spec = set.spec.template.spec;
    const { config, registrar } = settingsOf(spec);
    const declared = spec.containers.flatMap((c) => (c.ports ?? []).map((p) => p.containerPort));
    const listening = [
      Number(config.healthAddr?.split(":").pop()),
      Number(flag(registrar, "http-endpoint")?.split(":").pop()),
    ];
    const problems: string[] = [];
    if (new Set(declared).size !== declared.length)
      problems.push(`a container port is declared twice: ${declared.join(", ")}`);
    if (new Set(listening).size !== listening.length)
      problems.push(`the driver and the registrar both listen on ${listening[0]}`);
    return problems;
  });
}

/** Every flag the driver is given is one it has. */
export function flagsKnown(docs: Doc[]): string[] {
  const known = new Set(Object.keys(driverArgs));
  return driverSets(docs).flatMap((set) =>
    (container(set.spec.template.spec, "spiffe-csi-driver").args ?? [])
      .filter((a) => a.startsWith("-"))
      .map((a) => a.replace(/^--?/, "").split("=")[0] as string)
      .filter((name) => !known.has(name))
      .map((name) => `the driver has no flag --${name}`),
  );
}

/** The agent's socket directory comes from a hostPath above it, never an emptyDir. */
export function agentDirFromNode(docs: Doc[]): string[] {
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
export function leastExposure(docs: Doc[]): string[] {
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
export function linuxOnly(docs: Doc[]): string[] {
  return driverSets(docs)
    .filter((s) => s.spec.template.spec.nodeSelector?.["kubernetes.io/os"] !== "linux")
    .map((s) => `${s.metadata.name} has no kubernetes.io/os: linux node selector`);
}

/** Readiness is the driver's own serving (/healthz), never the agent's (/readyz). */
export function readinessIsOwnServing(docs: Doc[]): string[] {
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
export function graceCoversDrain(docs: Doc[]): string[] {
  return driverSets(docs).flatMap((set) => {
    const spec = set.spec.template.spec;
    const drain = settingsOf(spec).config.mountTimeoutMs / 1000 + 1;
    const grace = spec.terminationGracePeriodSeconds ?? 30;
    return grace >= drain + 10 ? [] : [`a grace of ${grace} s does not cover a ${drain} s drain`];
  });
}

/** The registrar has a liveness probe on its own /healthz. */
export function registrarLiveness(docs: Doc[]): string[] {
  return driverSets(docs).flatMap((set) => {
    const { registrar } = settingsOf(set.spec.template.spec);
    const endpoint = Number(flag(registrar, "http-endpoint")?.split(":").pop());
    const probe = registrar.livenessProbe?.httpGet;
    return probe?.path === "/healthz" && portOf(registrar, probe.port) === endpoint
      ? []
      : ["the registrar has no liveness probe on its --http-endpoint's /healthz"];
  });
}

/** The driver's pods get no service-account token: the driver never calls the API. */
export function noToken(docs: Doc[]): string[] {
  return driverSets(docs)
    .filter((s) => s.spec.template.spec.automountServiceAccountToken !== false)
    .map((s) => `${s.metadata.name} mounts a service-account token`);
}

const CRITICAL = ["system-node-critical", "system-cluster-critical"];
/** A critical priority class outside kube-system comes with the ResourceQuota that admits it. */
export function priorityAdmitted(docs: Doc[]): string[] {
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

/** The driver's kustomizations and chart never hold the namespace: deleting them keeps it. */
export function noNamespaceObject(docs: Doc[]): string[] {
  return docs.filter((d) => d.kind === "Namespace").map((d) => `Namespace ${d.metadata.name}`);
}

/** The settings object is kustomize's input only, never applied. */
export function settingsNotApplied(docs: Doc[]): string[] {
  return docs
    .filter((d) => d.metadata.name === "spiffe-csi-driver-settings")
    .map(() => "the settings ConfigMap is in the output");
}

/** The namespace admits privileged pods. */
export function podSecurityAdmits(docs: Doc[]): string[] {
  const ns = docs.find((d) => d.kind === "Namespace");
  return ns?.metadata.labels?.["pod-security.kubernetes.io/enforce"] === "privileged"
    ? []
    : ["the namespace does not enforce the privileged pod-security level"];
}

/**
 * Ingress to the driver's pods: only the health port, only from labelled scrapers in labelled
 * namespaces (a pod can label itself; only the operator labels a namespace).
 */
export function healthPortPolicy(docs: Doc[]): string[] {
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

type Scc = Doc & {
  allowPrivilegedContainer?: boolean;
  allowHostDirVolumePlugin?: boolean;
  volumes?: string[];
  readOnlyRootFilesystem?: boolean;
};
type RbacRule = {
  apiGroups: string[];
  resources: string[];
  resourceNames?: string[];
  verbs: string[];
};

/**
 * OpenShift: for each driver, an SCC admitting its pods, whose name a ClusterRole grants `use`
 * of, bound to the pods' service account; the CSIDriver objects' label.
 */
export function openshiftAdmits(docs: Doc[]): string[] {
  const problems: string[] = [];
  const sccs = docs.filter(
    (d): d is Scc =>
      d.kind === "SecurityContextConstraints" && d.apiVersion === "security.openshift.io/v1",
  );
  const admitting = sccs.filter((scc) => scc.allowPrivilegedContainer);
  if (admitting.length === 0) return ["no SecurityContextConstraints admits privileged pods"];
  for (const set of driverSets(docs)) {
    const spec = set.spec.template.spec;
    const namespace = set.metadata.namespace;
    const granted = admitting.filter((scc) => {
      const roles = docs
        .filter((d) => d.kind === "ClusterRole")
        .filter((d) =>
          (d.rules as RbacRule[]).some(
            (r) =>
              r.apiGroups.includes("security.openshift.io") &&
              r.resources.includes("securitycontextconstraints") &&
              r.resourceNames?.includes(scc.metadata.name) &&
              r.verbs.includes("use"),
          ),
        )
        .map((d) => d.metadata.name);
      return docs.some((d) => {
        const binding = d as Doc & {
          roleRef: { name: string };
          subjects?: { kind: string; name: string; namespace?: string }[];
        };
        return (
          (d.kind === "RoleBinding" || d.kind === "ClusterRoleBinding") &&
          roles.includes(binding.roleRef.name) &&
          (d.kind === "ClusterRoleBinding" || d.metadata.namespace === namespace) &&
          binding.subjects?.some(
            (s) =>
              s.kind === "ServiceAccount" &&
              s.name === spec.serviceAccountName &&
              s.namespace === namespace,
          )
        );
      });
    });
    const scc = granted[0];
    if (!scc) {
      problems.push(`no SCC that admits the pods is granted to ${spec.serviceAccountName}`);
      continue;
    }
    if (!scc.allowHostDirVolumePlugin || !scc.volumes?.includes("hostPath"))
      problems.push(`the SCC ${scc.metadata.name} refuses hostPath volumes`);
    if (
      scc.readOnlyRootFilesystem &&
      spec.containers.some((c) => !c.securityContext?.readOnlyRootFilesystem)
    )
      problems.push("a container's root file system is writable, which the SCC refuses");
  }
  for (const csiDriver of docs.filter((d) => d.kind === "CSIDriver")) {
    if (
      csiDriver.metadata.labels?.["security.openshift.io/csi-ephemeral-volume-profile"] !==
      "restricted"
    )
      problems.push(
        `the CSIDriver ${csiDriver.metadata.name} lacks the restricted ephemeral-volume profile label`,
      );
  }
  return problems;
}

/** A pod's CSI volume of this driver: read-only, and the socket where the SDKs look. */
export function podFindsSocket(pod: Doc & { spec: PodSpec }, plugin: string, socketName: string) {
  const c = pod.spec.containers[0] as Container;
  const volume = pod.spec.volumes?.find((v) => v.csi);
  const mount = c.volumeMounts?.find((m) => m.name === volume?.name);
  const socket = posix.join(mount?.mountPath ?? "?", socketName);
  const problems: string[] = [];
  if (envValue(c, "SPIFFE_ENDPOINT_SOCKET") !== `unix://${socket}`)
    problems.push(`SPIFFE_ENDPOINT_SOCKET is not unix://${socket}`);
  if (!c.args?.includes(socket)) problems.push(`the client is not pointed at ${socket}`);
  if (!volume?.csi?.readOnly || !mount?.readOnly) problems.push("the volume is not read-only");
  if (volume?.csi?.driver !== plugin) problems.push("the volume names another driver");
  return problems;
}

/** The rules every render of a driver DaemonSet follows. */
export const rules = {
  piecesAgree,
  onePluginName,
  oneKubeletRoot,
  portsDistinct,
  flagsKnown,
  agentDirFromNode,
  leastExposure,
  linuxOnly,
  readinessIsOwnServing,
  graceCoversDrain,
  registrarLiveness,
  noToken,
  priorityAdmitted,
  noNamespaceObject,
  settingsNotApplied,
  healthPortPolicy,
};

const firstSpec = (docs: Doc[]) => (driverSets(docs)[0] as Workload).spec.template.spec;
const driverOf = (docs: Doc[]) => container(firstSpec(docs), "spiffe-csi-driver");
const registrarOf = (docs: Doc[]) => container(firstSpec(docs), "node-driver-registrar");
const replaceArg = (c: Container, name: string, value: string) => {
  c.args = (c.args ?? []).map((a) => (a.startsWith(`--${name}=`) ? `--${name}=${value}` : a));
};

/** What `rule` says of a copy of `docs` that `breakIt` broke, a line each. */
export function saysOfBroken(
  docs: Doc[],
  rule: (docs: Doc[]) => string[],
  breakIt: (docs: Doc[]) => void,
): string {
  const broken = clone(docs);
  breakIt(broken);
  return rule(broken).join("\n");
}

/**
 * For each rule, a way to break a standalone render (the kustomize deployment's or the chart's
 * defaults), and what the rule then says.
 */
export const breakages: [string, (docs: Doc[]) => string[], (docs: Doc[]) => void, string][] = [
  [
    "piecesAgree",
    piecesAgree,
    (d) => {
      replaceArg(
        registrarOf(d),
        "kubelet-registration-path",
        "/var/lib/kubelet/plugins/other.example.org/csi.sock",
      );
    },
    "announces another socket",
  ],
  [
    "agentDirFromNode",
    agentDirFromNode,
    (d) => {
      (
        firstSpec(d).volumes?.find((v) => v.name === "spiffe-csi-agent-sockets") as Volume
      ).hostPath = undefined;
      (
        firstSpec(d).volumes?.find((v) => v.name === "spiffe-csi-agent-sockets") as Volume
      ).emptyDir = {};
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
      (firstSpec(d).volumes?.find((v) => v.name === "spiffe-csi-registration") as Volume).hostPath =
        {
          path: "/var/lib/kubelet",
        };
    },
    "/var/lib/kubelet of the kubelet's root is mounted",
  ],
  [
    "linuxOnly",
    linuxOnly,
    (d) => {
      firstSpec(d).nodeSelector = {};
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
      firstSpec(d).terminationGracePeriodSeconds = undefined;
    },
    "a grace of 30 s",
  ],
  [
    "registrarLiveness",
    registrarLiveness,
    (d) => {
      container(firstSpec(d), "node-driver-registrar").livenessProbe = undefined;
    },
    "no liveness probe",
  ],
  [
    "priorityAdmitted",
    priorityAdmitted,
    (d) => {
      firstSpec(d).priorityClassName = "system-node-critical";
    },
    "without a ResourceQuota",
  ],
  [
    "noNamespaceObject",
    noNamespaceObject,
    (d) => {
      d.push({ apiVersion: "v1", kind: "Namespace", metadata: { name: "spire" } });
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
  [
    "onePluginName",
    onePluginName,
    (d) => {
      (firstSpec(d).volumes?.find((v) => v.name === "spiffe-csi-plugin") as Volume).hostPath = {
        path: "/var/lib/kubelet/plugins/other.example.org",
      };
    },
    "plugin names differ",
  ],
  [
    "oneKubeletRoot",
    oneKubeletRoot,
    (d) => {
      (firstSpec(d).volumes?.find((v) => v.name === "spiffe-csi-registration") as Volume).hostPath =
        { path: "/var/lib/k0s/kubelet/plugins_registry" };
    },
    "more than one kubelet root",
  ],
  [
    "portsDistinct",
    portsDistinct,
    (d) => {
      const port = driverOf(d).ports?.[0]?.containerPort ?? 0;
      replaceArg(registrarOf(d), "http-endpoint", `:${port}`);
    },
    "both listen on",
  ],
  [
    "flagsKnown",
    flagsKnown,
    (d) => {
      driverOf(d).args?.push("--policy-file=/etc/policy");
    },
    "no flag --policy-file",
  ],
  [
    "noToken",
    noToken,
    (d) => {
      firstSpec(d).automountServiceAccountToken = undefined;
    },
    "mounts a service-account token",
  ],
];

/** Every leaf of a document as "path = value", for comparing renders. */
export function leaves(value: unknown, path = ""): Map<string, string> {
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

/** The leaves that differ between two renders holding one object of each kind. */
export function diff(before: Doc[], after: Doc[]): string[] {
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
