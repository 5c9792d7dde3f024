// The Helm chart (deploy/helm/spiffe-csi-driver), rendered by the real helm over a matrix of
// value sets, standalone and as the spiffe-csi-driver subchart (and upstream alias) of a parent
// laid out as SPIRE's chart: every render validates against the Kubernetes API schemas and follows
// the deployment's rules (./rules.ts), as the kustomize renders do; invalid values are refused; the
// values file, the schema and the chart's README agree; `helm package` makes the archive.
// tests/e2e/chart.test.ts runs the rendered driver container.
import { describe, expect, setDefaultTimeout, test } from "bun:test";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { parse as parseYaml } from "yaml";
import { BEGIN, END, schemaValues, valuesTable } from "../../scripts/chart-readme.ts";
import {
  breakages,
  type Container,
  chartDefaultArgs,
  chartDir,
  clone,
  container,
  type Doc,
  diff,
  driverConfig,
  driverSets,
  expectValid,
  helm,
  kustomize,
  openshiftAdmits,
  type PodSpec,
  parentChart,
  podFindsSocket,
  renderChart,
  renderParent,
  repo,
  rules,
  saysOfBroken,
  scratch,
  valuesFile,
  type Workload,
} from "./rules.ts";

// helm runs about a tenth of a second per render; generous for a loaded machine.
setDefaultTimeout(60_000);

const version = (
  JSON.parse(readFileSync(join(repo, "package.json"), "utf8")) as { version: string }
).version;

const valueSets = {
  defaults: {},
  openshift: { global: { openshift: true }, restrictedScc: { enabled: true } },
  recommendations: {
    global: {
      spire: {
        recommendations: { enabled: true },
        namespaces: { system: { name: "spire-agents" } },
      },
    },
  },
  upstream: {
    pluginName: "upstream.csi.spiffe.io",
    agentSocketPath: "/run/spire/agent-sockets-upstream/spire-agent.sock",
    healthChecks: { port: 9810 },
  },
  selinux: { selinux: { enabled: true, context: "svirt_sandbox_file_t" } },
  kubeletPath: { kubeletPath: "/var/lib/k0s/kubelet" },
  overrides: { nameOverride: "workload-api", namespaceOverride: "identity" },
  fullnameOverride: {
    fullnameOverride: "node-identity",
    serviceAccount: { name: "node-identity-sa" },
  },
  everything: {
    global: { spire: { image: { registry: "mirror.example.org" } } },
    image: { tag: "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef" },
    logLevel: "debug",
    logFormat: "json",
    mountTimeoutSeconds: 60,
    terminationGracePeriodSeconds: 75,
    recursiveBind: { enabled: true, allowWritableSubmounts: true },
    extraArgs: ["--max-connections=512", "--connection-idle-timeout=120"],
    extraEnvVars: [{ name: "TZ", value: "UTC" }],
    healthChecks: { port: 9819, driverPort: 9818 },
    hostNetwork: true,
    priorityClassName: "system-cluster-critical",
    agentSocketPath: "/var/run/spire/agent/public/api.sock",
    agentSocketParentPath: "/var/run/spire",
    imagePullSecrets: [{ name: "pull" }],
    tolerations: [{ operator: "Exists" }],
    nodeSelector: { "node.example.org/spiffe": "true" },
    podLabels: { team: "identity" },
    podAnnotations: { "example.org/owner": "identity" },
    initContainers: [
      {
        name: "wait",
        image: "busybox",
        command: ["true"],
        securityContext: { readOnlyRootFilesystem: true },
      },
    ],
    livenessProbe: { periodSeconds: 20, failureThreshold: 5 },
  },
} satisfies Record<string, object>;
const renders = Object.fromEntries(
  Object.entries(valueSets).map(([name, values]) => [name, renderChart(values)]),
) as Record<keyof typeof valueSets, Doc[]>;
// The fixture's values files are shaped like SPIRE's own (its README's production values, its
// federation and OpenShift examples, nested SPIRE, an image swap).
const parentRenders = {
  parentDefaults: renderParent([]),
  parentProduction: renderParent(["production.yaml"]),
  parentFederation: renderParent(["federation.yaml"]),
  parentOpenshift: renderParent(["openshift.yaml"]),
  parentNested: renderParent(["production.yaml", "nested.yaml"]),
  parentImageSwap: renderParent(["image-swap.yaml"]),
};
const allRenders = { ...renders, ...parentRenders };

const spec = (set: Workload) => set.spec.template.spec;
const driverOf = (docs: Doc[], index = 0) =>
  container(spec(driverSets(docs)[index] as Workload), "spiffe-csi-driver");
const registrarOf = (docs: Doc[], index = 0) =>
  container(spec(driverSets(docs)[index] as Workload), "node-driver-registrar");
const all = (docs: Doc[], kind: string) => docs.filter((d) => d.kind === kind);
const testPods = (docs: Doc[]) =>
  all(docs, "Pod").filter((d) => d.metadata.annotations?.["helm.sh/hook"] === "test") as (Doc & {
    spec: PodSpec;
  })[];

describe("helm lint --strict", () => {
  test("the chart, with its defaults", () => {
    const result = helm("lint", "--strict", chartDir);
    expect(result.stderr).toBe("");
    expect(result.code).toBe(0);
  });
  test.each(Object.entries(valueSets))("with the value set %s", (_, values) => {
    const result = helm("lint", "--strict", chartDir, "-f", valuesFile(values));
    expect(`${result.stdout}${result.stderr}`).toContain("0 chart(s) failed");
    expect(result.code).toBe(0);
  });
});

describe("every render validates against the Kubernetes API schemas", () => {
  test.each(Object.entries(allRenders))("%s", (_, docs) => {
    expect(driverSets(docs).length).toBeGreaterThan(0);
    expectValid(docs);
  });
});

describe("every render follows the rules", () => {
  for (const [name, rule] of Object.entries(rules)) {
    test.each(Object.entries(allRenders))(`${name}: %s`, (_, docs) => {
      expect(rule(docs)).toEqual([]);
    });
  }
  test.each([
    ["openshift", renders.openshift],
    ["parentOpenshift", parentRenders.parentOpenshift],
  ])("openshiftAdmits: %s", (_, docs) => {
    expect(openshiftAdmits(docs)).toEqual([]);
  });
  test.each(Object.entries(allRenders))(
    "the helm test pod uses each driver's volume: %s",
    (name, docs) => {
      // The socket's name in the volume is agentSocketPath's.
      const socketName = name === "everything" ? "api.sock" : "spire-agent.sock";
      const sets = driverSets(docs);
      const pods = testPods(docs);
      expect(pods.length).toBe(sets.length);
      for (const set of sets) {
        const { pluginName } = driverConfig(container(spec(set), "spiffe-csi-driver"));
        const pod = pods.find((p) => p.spec.volumes?.[0]?.csi?.driver === pluginName);
        expect(podFindsSocket(pod as Doc & { spec: PodSpec }, pluginName, socketName)).toEqual([]);
        expect(pod?.spec.automountServiceAccountToken).toBe(false);
      }
    },
  );
});

describe("each rule fails on the chart's render broken on purpose", () => {
  test.each(breakages)("%s", (_, rule, breakIt, message) => {
    expect(saysOfBroken(renders.defaults, rule, breakIt)).toContain(message);
  });
  test("openshiftAdmits", () => {
    const noBinding = clone(renders.openshift).filter((d) => d.kind !== "RoleBinding");
    expect(openshiftAdmits(noBinding).join()).toContain("no SCC that admits the pods is granted");
    const renamed = clone(renders.openshift);
    (
      renamed.find(
        (d) => d.metadata.name === "spiffe-csi-driver" && d.kind === "SecurityContextConstraints",
      ) as Doc
    ).metadata.name = "other";
    expect(openshiftAdmits(renamed).join()).toContain("no SCC that admits the pods is granted");
    expect(openshiftAdmits(renders.defaults).join()).toContain("no SecurityContextConstraints");
  });
});

describe("the defaults", () => {
  const docs = renders.defaults;
  const driver = driverOf(docs);
  test("the driver's image is the chart's appVersion, the project's version", () => {
    const chart = parseYaml(readFileSync(join(chartDir, "Chart.yaml"), "utf8")) as {
      appVersion: string;
    };
    expect(chart.appVersion).toBe(version);
    expect(driver.image).toBe(`spiffe-csi-driver:${version}`);
    expect(registrarOf(docs).image).toBe(
      "registry.k8s.io/sig-storage/csi-node-driver-registrar:v2.18.0",
    );
  });
  test("the driver's exact arguments; health on 9808, the registrar on 9809", () => {
    expect(driver.args).toEqual(chartDefaultArgs("/run/spire/agent-sockets"));
    expect(driver.ports).toEqual([{ name: "health", containerPort: 9808 }]);
    expect(registrarOf(docs).args).toEqual([
      "--csi-address=/spiffe-csi/csi.sock",
      "--kubelet-registration-path=/var/lib/kubelet/plugins/csi.spiffe.io/csi.sock",
      "--http-endpoint=:9809",
    ]);
  });
  test("configure the driver as the kustomize deployment does", () => {
    const standalone = kustomize(join(repo, "deploy", "kubernetes"));
    const { policy: chartPolicy, ...chart } = driverConfig(driver);
    const { policy: kustomizePolicy, ...kustomized } = driverConfig(driverOf(standalone));
    expect(chart).toEqual(kustomized);
    // The pods admitted are the same: the chart gives no --allow rule (every pod), kustomize's
    // single --allow=$(ALLOW) setting "*" (every pod the kubelet names), and both CSIDriver
    // objects make the kubelet name every pod (podInfoOnMount).
    expect(chartPolicy.describe()).toBe("every pod (no --allow rule)");
    expect(kustomizePolicy.describe()).toBe("*/*");
    for (const render of [docs, standalone]) {
      const csiDriver = all(render, "CSIDriver")[0] as Doc & { spec: { podInfoOnMount?: boolean } };
      expect(csiDriver.spec.podInfoOnMount).toBe(true);
    }
  });
  test("nothing optional: no priority class or quota, no SCC, no admission policy", () => {
    const set = driverSets(docs)[0] as Workload;
    expect(spec(set).priorityClassName).toBeUndefined();
    expect(spec(set).hostNetwork).toBeUndefined();
    expect(docs.map((d) => d.kind).sort()).toEqual(
      ["CSIDriver", "DaemonSet", "NetworkPolicy", "Pod", "ServiceAccount"].sort(),
    );
    expect(set.metadata.namespace).toBe("spire");
  });
});

describe("each value set lands where it belongs", () => {
  test("OpenShift: the SCC, its grant, the CSIDriver label and sync wave, the restricted SCC", () => {
    const docs = renders.openshift;
    const sccs = all(docs, "SecurityContextConstraints").map((d) => d.metadata.name);
    expect(sccs.sort()).toEqual(["restricted-v2-csi", "spiffe-csi-driver"]);
    const csiDriver = all(docs, "CSIDriver")[0] as Doc;
    expect(csiDriver.metadata.labels?.["security.openshift.io/csi-ephemeral-volume-profile"]).toBe(
      "restricted",
    );
    expect(csiDriver.metadata.annotations).toEqual({ "argocd.argoproj.io/sync-wave": "-1" });
    // OpenShift allocates the test pod's user.
    const pod = testPods(docs)[0] as Doc & { spec: PodSpec };
    expect(pod.spec.containers[0]?.securityContext?.runAsUser).toBeUndefined();
    expect(testPods(renders.defaults)[0]?.spec.containers[0]?.securityContext?.runAsUser).toBe(
      65534,
    );
  });

  test("SPIRE's recommendations: its system namespace, system-node-critical and its quota", () => {
    const docs = renders.recommendations;
    const set = driverSets(docs)[0] as Workload;
    expect(set.metadata.namespace).toBe("spire-agents");
    expect(spec(set).priorityClassName).toBe("system-node-critical");
    const quota = all(docs, "ResourceQuota")[0] as Doc & { spec: unknown };
    expect(quota.metadata.namespace).toBe("spire-agents");
    expect(JSON.stringify(quota.spec)).toContain('"values":["system-node-critical"]');
    for (const doc of docs) {
      if (doc.kind !== "CSIDriver") expect(doc.metadata.namespace).toBe("spire-agents");
    }
  });

  test("an upstream driver: its admission policy (Kubernetes 1.30 and later), its test pod where it admits", () => {
    const docs = renders.upstream;
    const policy = all(docs, "ValidatingAdmissionPolicy")[0] as Doc;
    expect(policy.metadata.name).toBe("upstream.csi.spiffe.io");
    const binding = all(docs, "ValidatingAdmissionPolicyBinding")[0] as Doc;
    expect(JSON.stringify(binding.spec)).toContain('"values":["spire"]');
    expect(driverOf(docs).args).toContain(
      "--workload-api-socket-dir=/run/spire/agent-sockets-upstream",
    );
    expect(registrarOf(docs).args).toContain("--http-endpoint=:9810");
    const older = renderChart(valueSets.upstream, "--kube-version", "1.29.0");
    expect(all(older, "ValidatingAdmissionPolicy")).toEqual([]);
    expect(all(renders.defaults, "ValidatingAdmissionPolicy")).toEqual([]);
    const forced = renderChart({ validatingAdmissionPolicy: { enabled: true } });
    expect(all(forced, "ValidatingAdmissionPolicy").length).toBe(1);
  });

  test("SELinux: labelling required, SPIRE's bare type or a whole context", () => {
    expect(driverOf(renders.selinux).args).toContain("--selinux-label=on");
    expect(driverOf(renders.selinux).args).toContain(
      "--selinux-context=system_u:object_r:svirt_sandbox_file_t:s0",
    );
    const whole = renderChart({
      selinux: { label: "off", context: "system_u:object_r:spiffe_t:s0:c1,c2" },
    });
    expect(driverOf(whole).args).toContain("--selinux-label=off");
    expect(driverOf(whole).args).toContain("--selinux-context=system_u:object_r:spiffe_t:s0:c1,c2");
    const global = renderChart({ global: { selinux: true } });
    expect(driverOf(global).args).toContain("--selinux-label=on");
  });

  test("a kubelet root: every path under it, none under the default", () => {
    const text = JSON.stringify(renders.kubeletPath);
    expect(text).not.toContain("/var/lib/kubelet");
    expect(
      diff(renders.defaults, renders.kubeletPath).filter((c) => !c.startsWith("Pod.")),
    ).toEqual(
      [
        'DaemonSet.spec.template.spec.containers[node-driver-registrar].args[1] = "--kubelet-registration-path=/var/lib/k0s/kubelet/plugins/csi.spiffe.io/csi.sock"',
        'DaemonSet.spec.template.spec.containers[spiffe-csi-driver].volumeMounts[spiffe-csi-kubelet-pods].mountPath = "/var/lib/k0s/kubelet/pods"',
        'DaemonSet.spec.template.spec.volumes[spiffe-csi-kubelet-pods].hostPath.path = "/var/lib/k0s/kubelet/pods"',
        'DaemonSet.spec.template.spec.volumes[spiffe-csi-plugin].hostPath.path = "/var/lib/k0s/kubelet/plugins/csi.spiffe.io"',
        'DaemonSet.spec.template.spec.volumes[spiffe-csi-registration].hostPath.path = "/var/lib/k0s/kubelet/plugins_registry"',
      ].sort(),
    );
  });

  test("name and namespace overrides", () => {
    for (const doc of renders.overrides) {
      if (doc.kind !== "CSIDriver") expect(doc.metadata.namespace).toBe("identity");
      if (doc.kind !== "CSIDriver" && doc.kind !== "Pod")
        expect(doc.metadata.name).toBe("spiffe-csi-driver-workload-api");
      expect(doc.metadata.labels?.["app.kubernetes.io/name"]).toBe(
        doc.kind === "Pod" ? "workload-api-test" : "workload-api",
      );
    }
    const set = driverSets(renders.fullnameOverride)[0] as Workload;
    expect(set.metadata.name).toBe("node-identity");
    expect(spec(set).serviceAccountName).toBe("node-identity-sa");
    expect(all(renders.fullnameOverride, "ServiceAccount")[0]?.metadata.name).toBe(
      "node-identity-sa",
    );
  });

  test("every other value", () => {
    const docs = renders.everything;
    const set = driverSets(docs)[0] as Workload;
    const driver = driverOf(docs);
    expect(driver.image).toBe(
      "mirror.example.org/spiffe-csi-driver@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
    );
    expect(registrarOf(docs).image).toBe(
      "mirror.example.org/sig-storage/csi-node-driver-registrar:v2.18.0",
    );
    expect(testPods(docs)[0]?.spec.containers[0]?.image).toBe(
      "mirror.example.org/spiffe/spire-agent:1.13.3",
    );
    expect(driver.args).toEqual([
      "--workload-api-socket-dir=/var/run/spire/agent/public",
      "--plugin-name=csi.spiffe.io",
      "--csi-socket-path=/spiffe-csi/csi.sock",
      "--health-addr=:9818",
      "--log-level=debug",
      "--log-format=json",
      "--mount-timeout=60",
      "--selinux-label=auto",
      "--selinux-context=system_u:object_r:container_file_t:s0",
      "--recursive-bind",
      "--allow-writable-submounts",
      "--max-connections=512",
      "--connection-idle-timeout=120",
    ]);
    const config = driverConfig(driver);
    expect(config.mountTimeoutMs).toBe(60_000);
    expect(config.recursiveBind).toBe(true);
    expect(driver.env).toContainEqual({ name: "TZ", value: "UTC" });
    expect(driver.volumeMounts?.[0]).toEqual({
      name: "spiffe-csi-agent-sockets",
      mountPath: "/var/run/spire",
      mountPropagation: "HostToContainer",
    });
    expect(spec(set).hostNetwork).toBe(true);
    expect(spec(set).terminationGracePeriodSeconds).toBe(75);
    expect(spec(set).nodeSelector).toEqual({
      "kubernetes.io/os": "linux",
      "node.example.org/spiffe": "true",
    });
    expect(set.spec.template.metadata.labels.team).toBe("identity");
    expect((spec(set) as { initContainers?: Container[] }).initContainers?.[0]?.name).toBe("wait");
    expect(driver.livenessProbe as object).toEqual({
      httpGet: { path: "/healthz", port: "health" },
      initialDelaySeconds: 5,
      timeoutSeconds: 5,
      periodSeconds: 20,
      failureThreshold: 5,
    });
    // livenessProbe.* times the registrar's liveness probe too.
    expect(registrarOf(docs).livenessProbe as object).toEqual({
      httpGet: { path: "/healthz", port: "registrar" },
      initialDelaySeconds: 5,
      timeoutSeconds: 5,
      periodSeconds: 20,
      failureThreshold: 5,
    });
    expect(all(docs, "ResourceQuota")[0]?.metadata.name).toBe(
      "spiffe-csi-driver-system-cluster-critical",
    );
  });
});

describe("values refused", () => {
  // [what, values, the message's telling part]
  const refused: [string, object, string][] = [
    ["a plugin name that is not a domain name", { pluginName: "Not_A_Name!" }, "pluginName"],
    ["a plugin name over 63 characters", { pluginName: `${"a".repeat(60)}.org` }, "pluginName"],
    ["a relative kubelet root", { kubeletPath: "var/lib/kubelet" }, "kubeletPath"],
    ["a kubelet root with ..", { kubeletPath: "/var/lib/../kubelet" }, "kubeletPath"],
    ["a relative agent socket", { agentSocketPath: "spire-agent.sock" }, "agentSocketPath"],
    ["a port out of range", { healthChecks: { driverPort: 70000 } }, "driverPort"],
    ["port 0", { healthChecks: { port: 0 } }, "healthChecks"],
    ["an unknown log level", { logLevel: "verbose" }, "logLevel"],
    ["an unknown log format", { logFormat: "xml" }, "logFormat"],
    ["an unknown SELinux mode", { selinux: { label: "maybe" } }, "selinux"],
    ["a malformed SELinux context", { selinux: { context: "a:b" } }, "selinux"],
    ["an unknown update strategy", { updateStrategy: { type: "Recreate" } }, "updateStrategy"],
    [
      "a port that is not a number",
      { healthChecks: { port: "notaport" } },
      "at '/healthChecks/port': got string, want integer",
    ],
    ["a flag that is not one", { extraArgs: ["max-connections=5"] }, "extraArgs"],
    ["a mount timeout of 0", { mountTimeoutSeconds: 0 }, "mountTimeoutSeconds"],
    [
      "a scraper selector matching every namespace",
      { networkPolicy: { scraperNamespaceLabels: null } },
      "must each hold a label",
    ],
    // What the schema cannot compare, refused by the templates:
    [
      "the same port for the driver and the registrar",
      { healthChecks: { port: 9808 } },
      "give them different ports",
    ],
    [
      "a grace shorter than the drain",
      { mountTimeoutSeconds: 60 },
      "shorter than the driver's drain",
    ],
    [
      "the Go driver's 64Mi memory limit",
      { resources: { limits: { memory: "64Mi" } } },
      "below 128Mi",
    ],
    [
      "a flag a value sets, in extraArgs",
      { extraArgs: ["--plugin-name=other.example.org"] },
      "is set by the chart",
    ],
    ["an agent socket right below /", { agentSocketPath: "/run/agent.sock" }, "which is /"],
    [
      "a parent that does not hold the socket's directory",
      { agentSocketParentPath: "/var/run" },
      "does not hold",
    ],
  ];
  test.each(refused)("%s", (_, values, message) => {
    const result = helm("template", "spiffe-csi-driver", chartDir, "-f", valuesFile(values));
    expect(result.code).not.toBe(0);
    expect(result.stderr).toContain(message);
  });
  test("values close to the bounds are accepted (the refusals are precise)", () => {
    expect(() =>
      renderChart({
        pluginName: `${"a".repeat(59)}.org`,
        healthChecks: { port: 1, driverPort: 65535 },
        resources: { limits: { memory: "128Mi" } },
        mountTimeoutSeconds: 44,
        agentSocketPath: "/run/spire/spire-agent.sock",
        agentSocketParentPath: "/run",
      }),
    ).not.toThrow();
  });
});

describe("the values, the schema and the chart's README agree", () => {
  const schema = JSON.parse(readFileSync(join(chartDir, "values.schema.json"), "utf8"));
  const values = parseYaml(readFileSync(join(chartDir, "values.yaml"), "utf8")) as Record<
    string,
    unknown
  >;
  const described = schemaValues(schema);
  const dig = (path: string) =>
    path
      .split(".")
      .reduce<unknown>((v, k) => (v as Record<string, unknown> | undefined)?.[k], values);

  test("every value of values.yaml has a description and its default in the schema", () => {
    for (const [name, entry] of described) {
      expect(entry.description, name).toBeTruthy();
      expect(dig(name), name).toEqual(entry.default);
    }
  });
  test("every value of values.yaml is in the schema", () => {
    const names = new Set(described.map(([name]) => name));
    const leafNames = (value: unknown, prefix: string): string[] =>
      value !== null && typeof value === "object" && !Array.isArray(value) && !names.has(prefix)
        ? Object.entries(value).flatMap(([k, v]) => leafNames(v, prefix ? `${prefix}.${k}` : k))
        : [prefix];
    for (const name of leafNames(values, "").filter((n) => n !== "global")) {
      expect(names.has(name), name).toBe(true);
    }
  });
  test("SPIRE's subchart's values are all here, with its defaults where they mean the same", () => {
    // spiffe/helm-charts-hardened, charts/spire/charts/spiffe-csi-driver/values.yaml.
    const spire: Record<string, unknown> = {
      pluginName: "csi.spiffe.io",
      "image.pullPolicy": "IfNotPresent",
      "image.tag": "",
      extraEnvVars: [],
      "healthChecks.port": 9809,
      "updateStrategy.type": "RollingUpdate",
      "updateStrategy.rollingUpdate.maxUnavailable": 1,
      "livenessProbe.initialDelaySeconds": 5,
      "livenessProbe.timeoutSeconds": 5,
      imagePullSecrets: [],
      nameOverride: "",
      namespaceOverride: "",
      serverNamespaceOverride: "",
      "validatingAdmissionPolicy.enabled": "auto",
      fullnameOverride: "",
      csiDriverLabels: {},
      csiDriverAnnotations: {},
      syncWave: -1,
      initContainers: [],
      "serviceAccount.create": true,
      "serviceAccount.annotations": {},
      "serviceAccount.name": "",
      podAnnotations: {},
      podLabels: {},
      podSecurityContext: {},
      securityContext: {
        readOnlyRootFilesystem: true,
        privileged: true,
        capabilities: { drop: ["ALL"] },
      },
      hostNetwork: false,
      nodeSelector: {},
      tolerations: [],
      affinity: {},
      "nodeDriverRegistrar.image.registry": "registry.k8s.io",
      "nodeDriverRegistrar.image.repository": "sig-storage/csi-node-driver-registrar",
      "nodeDriverRegistrar.image.pullPolicy": "IfNotPresent",
      "nodeDriverRegistrar.extraEnvVars": [],
      agentSocketPath: "/run/spire/agent-sockets/spire-agent.sock",
      kubeletPath: "/var/lib/kubelet",
      priorityClassName: "",
      "restrictedScc.enabled": false,
      "restrictedScc.name": "",
      "restrictedScc.version": 2,
      "selinux.enabled": false,
      "selinux.context": "container_file_t",
    };
    for (const [name, fallback] of Object.entries(spire)) expect(dig(name), name).toEqual(fallback);
    // What means something else here: the image is this driver's, and resources are the driver
    // container's alone (the registrar has its own), sized for it. The registrar is a newer
    // release than SPIRE's v2.15.0.
    for (const name of [
      "image.registry",
      "image.repository",
      "resources",
      "nodeDriverRegistrar.image.tag",
    ]) {
      expect(described.some(([n]) => n === name)).toBe(true);
    }
  });
  test("the chart's README lists every value: its table is the one generated from the schema", () => {
    const readme = readFileSync(join(chartDir, "README.md"), "utf8");
    const table = readme.slice(readme.indexOf(BEGIN), readme.indexOf(END) + END.length);
    expect(table).toBe(valuesTable());
    for (const [name] of described) expect(table).toContain(`| \`${name}\` |`);
  });
});

describe("helm package", () => {
  test("makes the chart's archive, which renders as the chart's directory does", () => {
    const packed = helm("package", chartDir, "-d", scratch);
    expect(packed.code).toBe(0);
    const archive = join(scratch, `spiffe-csi-driver-${version}.tgz`);
    expect(packed.stdout).toContain(archive);
    const listing = Bun.spawnSync(["tar", "tzf", archive], { stdout: "pipe" }).stdout.toString();
    for (const file of [
      "Chart.yaml",
      "values.yaml",
      "values.schema.json",
      "README.md",
      "templates/daemonset.yaml",
      "templates/NOTES.txt",
      "templates/tests/test-workload-api.yaml",
    ]) {
      expect(listing).toContain(`spiffe-csi-driver/${file}`);
    }
    const fromArchive = helm("template", "spiffe-csi-driver", archive, "-n", "spire");
    const fromDir = helm("template", "spiffe-csi-driver", chartDir, "-n", "spire");
    expect(fromArchive.code).toBe(0);
    expect(fromArchive.stdout).toBe(fromDir.stdout);
  });

  test("the install notes say how to check the install", () => {
    const notes = helm("install", "spiffe-csi-driver", chartDir, "-n", "spire", "--dry-run=client");
    expect(notes.code).toBe(0);
    expect(notes.stdout).toContain("kubectl -n spire rollout status daemonset/spiffe-csi-driver");
    expect(notes.stdout).toContain("helm test -n spire spiffe-csi-driver");
    expect(notes.stdout).toContain("port 9808");
  });
});

describe("as SPIRE's spiffe-csi-driver subchart, with values shaped like SPIRE's", () => {
  test("production: SPIRE's system namespace, system-node-critical, one driver", () => {
    const docs = parentRenders.parentProduction;
    const sets = driverSets(docs);
    expect(sets.map((s) => [s.metadata.name, s.metadata.namespace])).toEqual([
      ["spire-spiffe-csi-driver", "spire-system"],
    ]);
    expect(spec(sets[0] as Workload).priorityClassName).toBe("system-node-critical");
    expect(driverOf(docs).args).toContain("--workload-api-socket-dir=/run/spire/agent-sockets");
  });
  test("federation: the plugin name and agent socket of SPIRE's values", () => {
    const docs = parentRenders.parentFederation;
    expect(driverOf(docs).args).toContain("--plugin-name=a.csi.spiffe.io");
    expect(driverOf(docs).args).toContain("--workload-api-socket-dir=/run/spire/agent-sockets-a");
    expect(all(docs, "CSIDriver")[0]?.metadata.name).toBe("a.csi.spiffe.io");
  });
  test("OpenShift: the kubelet root, the global registry, the SCCs", () => {
    const docs = parentRenders.parentOpenshift;
    expect(registrarOf(docs).args).toContain(
      "--kubelet-registration-path=/var/data/kubelet/plugins/csi.spiffe.io/csi.sock",
    );
    expect(driverOf(docs).image).toBe(`registry.example.org/spiffe-csi-driver:${version}`);
    expect(
      all(docs, "SecurityContextConstraints")
        .map((d) => d.metadata.name)
        .sort(),
    ).toEqual(["restricted-v2-csi", "spire-spiffe-csi-driver"]);
  });
  test("nested: the upstream alias renders a second driver of its own, with its policy", () => {
    const docs = parentRenders.parentNested;
    const sets = driverSets(docs);
    expect(sets.map((s) => s.metadata.name)).toEqual([
      "spire-spiffe-csi-driver",
      "spire-upstream-spiffe-csi-driver",
    ]);
    expect(driverOf(docs, 1).args).toContain("--plugin-name=upstream.csi.spiffe.io");
    expect(driverOf(docs, 1).args).toContain(
      "--workload-api-socket-dir=/run/spire/agent-sockets-upstream",
    );
    expect(registrarOf(docs, 1).args).toContain("--http-endpoint=:9810");
    // The upstream driver runs this driver's image too: nothing to set twice.
    expect(driverOf(docs, 1).image).toBe(driverOf(docs, 0).image);
    expect(all(docs, "CSIDriver").map((d) => d.metadata.name)).toEqual([
      "csi.spiffe.io",
      "upstream.csi.spiffe.io",
    ]);
    const binding = all(docs, "ValidatingAdmissionPolicyBinding")[0] as Doc;
    expect(JSON.stringify(binding.spec)).toContain('"values":["spire-server"]');
    expect(testPods(docs).map((p) => p.metadata.namespace)).toEqual([
      "spire-system",
      "spire-server",
    ]);
    expect(driverSets(parentRenders.parentProduction).length).toBe(1);
  });
  test("an image swap's values: the image, global pull secrets, scheduling", () => {
    const docs = parentRenders.parentImageSwap;
    const set = driverSets(docs)[0] as Workload;
    expect(driverOf(docs).image).toBe("registry.example.org/spiffe-csi-driver:0.1.0");
    expect((spec(set) as { imagePullSecrets?: unknown }).imagePullSecrets).toEqual([
      { name: "registry-credentials" },
    ]);
    expect(spec(set).tolerations).toEqual([{ key: "dedicated", operator: "Exists" }]);
    expect(spec(set).nodeSelector).toEqual({
      "kubernetes.io/os": "linux",
      "node-role.example.org/workloads": "true",
    });
    // SPIRE's resources value sets the driver's requests; the chart's limit stays.
    expect(driverOf(docs).resources).toEqual({
      requests: { cpu: "50m", memory: "64Mi" },
      limits: { memory: "256Mi" },
    });
  });
});

describe("values the chart does not know are accepted and ignored; the known ones stay typed", () => {
  // One SPIRE's chart may add (SPIFFEFS), a made-up one, and a made-up key inside a known object.
  const unknown = {
    spiffefs: { enabled: true },
    madeUpValue: "anything",
    image: { digest: "sha256:0123" },
  };
  const strip = (docs: Doc[]) => JSON.stringify(docs);

  test("the chart renders as with its defaults, and `helm lint --strict` passes", () => {
    expect(strip(renderChart(unknown))).toBe(strip(renders.defaults));
    const lint = helm("lint", "--strict", chartDir, "-f", valuesFile(unknown));
    expect(`${lint.stdout}${lint.stderr}`).toContain("0 chart(s) failed");
    expect(lint.code).toBe(0);
  });

  test("the install notes name the unknown top-level values", () => {
    const notes = helm(
      "install",
      "spiffe-csi-driver",
      chartDir,
      "-n",
      "spire",
      "--dry-run=client",
      "-f",
      valuesFile(unknown),
    );
    expect(notes.code).toBe(0);
    expect(notes.stdout).toContain(
      "Values this chart version does not know, accepted and ignored: madeUpValue, spiffefs.",
    );
    const plain = helm("install", "spiffe-csi-driver", chartDir, "-n", "spire", "--dry-run=client");
    expect(plain.stdout).not.toContain("does not know");
  });

  test("the notes' list of known values is the schema's", () => {
    const schema = JSON.parse(readFileSync(join(chartDir, "values.schema.json"), "utf8")) as {
      properties: Record<string, unknown>;
    };
    const helpers = readFileSync(join(chartDir, "templates", "_helpers.tpl"), "utf8");
    const known = /define "spiffe-csi\.knownValues" -\}\}\n(.*)\n/.exec(helpers)?.[1];
    expect(known?.split(" ")).toEqual(Object.keys(schema.properties));
  });

  test("SPIRE's layout renders with unknown values in the subchart's section (`--set`)", () => {
    const docs = renderParent(
      ["production.yaml"],
      "--set",
      "spiffe-csi-driver.spiffefs.enabled=true",
      "--set",
      "spiffe-csi-driver.madeUpValue=anything",
      "--set",
      "spiffe-csi-driver.nodeDriverRegistrar.madeUpValue=1",
    );
    expectValid(docs);
    expect(strip(docs)).toBe(strip(parentRenders.parentProduction));
  });

  test("a known value of the wrong type still fails, naming it: healthChecks.port=notaport", () => {
    const standalone = helm(
      "template",
      "spiffe-csi-driver",
      chartDir,
      "--set",
      "healthChecks.port=notaport",
    );
    expect(standalone.code).not.toBe(0);
    expect(standalone.stderr).toContain("at '/healthChecks/port': got string, want integer");
    const parent = helm(
      "template",
      "spire",
      parentChart(),
      "--set",
      "spiffe-csi-driver.spiffefs.enabled=true",
      "--set",
      "spiffe-csi-driver.healthChecks.port=notaport",
    );
    expect(parent.code).not.toBe(0);
    expect(parent.stderr).toContain("at '/healthChecks/port': got string, want integer");
  });
});

describe("the CSIDriver object by Kubernetes version", () => {
  const csiDriverOf = (docs: Doc[]) =>
    all(docs, "CSIDriver")[0] as Doc & { spec: Record<string, unknown> };

  test("1.37.0: preventPodSchedulingIfMissing: true; seLinuxMount: false", () => {
    const docs = renderChart({}, "--kube-version", "1.37.0");
    expectValid(docs);
    expect(csiDriverOf(docs).spec.preventPodSchedulingIfMissing).toBe(true);
    expect(csiDriverOf(docs).spec.seLinuxMount).toBe(false);
  });
  test("1.33.0: no preventPodSchedulingIfMissing; seLinuxMount: false", () => {
    const docs = renderChart({}, "--kube-version", "1.33.0");
    expect(csiDriverOf(docs).spec).not.toHaveProperty("preventPodSchedulingIfMissing");
    expect(csiDriverOf(docs).spec.seLinuxMount).toBe(false);
  });
  test("1.37.0 with the value off (for the cluster autoscaler): no preventPodSchedulingIfMissing", () => {
    const docs = renderChart({ preventPodSchedulingIfMissing: false }, "--kube-version", "1.37.0");
    expect(csiDriverOf(docs).spec).not.toHaveProperty("preventPodSchedulingIfMissing");
  });
  test("SPIRE's layout on 1.37.0: both drivers of nested SPIRE set it", () => {
    const docs = renderParent(["production.yaml", "nested.yaml"], "--kube-version", "1.37.0");
    expect(
      all(docs, "CSIDriver").map(
        (d) => (d as Doc & { spec: Record<string, unknown> }).spec.preventPodSchedulingIfMissing,
      ),
    ).toEqual([true, true]);
  });
});
