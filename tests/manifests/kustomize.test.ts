// The deployment as kustomize renders it (standalone, in the agent's DaemonSet, with each
// component, under a name prefix and suffix, and an overlay that changes every setting) validates
// against the Kubernetes API schemas, and follows the deployment's rules (./rules.ts), each shown
// to pass on every render and to fail on a render broken on purpose.
import { describe, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { join, posix, resolve } from "node:path";
import { parseArgs } from "citty";
import { DaemonSet } from "kubernetes-models/apps/v1";
import { normalizeArgv } from "../../src/cli/argv.ts";
import { configFromArgs, args as driverArgs } from "../../src/cli/config.ts";
import {
  breakages,
  type Container,
  clone,
  container,
  type Doc,
  diff,
  driverSets,
  type Env,
  expectValid,
  kustomize,
  nodePath,
  one,
  openshiftAdmits,
  type PodSpec,
  parse,
  podFindsSocket,
  podSecurityAdmits,
  rules,
  saysOfBroken,
  settingsOf,
  type Workload,
} from "./rules.ts";

const repo = resolve(import.meta.dir, "../..");
const kubernetes = join(repo, "deploy", "kubernetes");
const fixtures = join(repo, "tests", "fixtures");

const renders = {
  standalone: kustomize(kubernetes),
  agent: kustomize(join(kubernetes, "example-agent")),
  overlay: kustomize(join(fixtures, "overlay")),
  openshift: kustomize(join(fixtures, "openshift")),
  openshiftPrefixed: kustomize(join(fixtures, "openshift-prefixed")),
  nodeCritical: kustomize(join(fixtures, "node-critical")),
  namespace: kustomize(join(kubernetes, "namespace")),
};
const workloadPod = parse(readFileSync(join(kubernetes, "workload.yaml"), "utf8"));
const exampleAgent = parse(
  readFileSync(join(kubernetes, "example-agent", "spire-agent.yaml"), "utf8"),
);
const workloadFindsSocket = (docs: Doc[]) =>
  podFindsSocket(
    docs.find((d) => d.kind === "Pod") as Doc & { spec: PodSpec },
    "csi.spiffe.io",
    "spire-agent.sock",
  );

const driverRenders = {
  standalone: renders.standalone,
  agent: renders.agent,
  overlay: renders.overlay,
  openshift: renders.openshift,
  openshiftPrefixed: renders.openshiftPrefixed,
  nodeCritical: renders.nodeCritical,
};

describe("every rendered manifest validates against the Kubernetes API schema", () => {
  const all = [...Object.entries(renders), ["workload.yaml", workloadPod] as const];
  test.each(all)("%s", (_, docs) => {
    expectValid(docs);
  });

  test("a broken manifest does not validate (the check can fail)", () => {
    const broken = clone(driverSets(renders.standalone)[0]) as Workload;
    (broken.spec.template.spec as unknown as { containers: string }).containers = "nope";
    expect(() => new DaemonSet(broken as never).validate()).toThrow();
  });
});

describe("every render follows the rules", () => {
  // The agent's pods are the agent's: a NetworkPolicy for them is the agent deployment's choice
  // (see docs/installing.md: the health port).
  // Nor are its service account and token: the agent needs its own to reach the API.
  const notFor: Record<string, string[]> = { healthPortPolicy: ["agent"], noToken: ["agent"] };
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
  test("openshiftAdmits: the OpenShift variant, and under a name prefix and suffix", () => {
    expect(openshiftAdmits(renders.openshift)).toEqual([]);
    expect(openshiftAdmits(renders.openshiftPrefixed)).toEqual([]);
    // The SCC was renamed, and the ClusterRole's grant followed it.
    const scc = one<Doc>(renders.openshiftPrefixed, "SecurityContextConstraints");
    expect(scc.metadata.name).toBe("team-spiffe-csi-driver-a");
    const role = renders.openshiftPrefixed.find((d) => d.kind === "ClusterRole") as Doc & {
      rules: { resourceNames: string[] }[];
    };
    expect(role.rules[0]?.resourceNames).toEqual(["team-spiffe-csi-driver-a"]);
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
  test("the CSIDriver object: seLinuxMount false; preventPodSchedulingIfMissing left to 1.37 overlays", () => {
    const spec = (one(renders.standalone, "CSIDriver") as Doc & { spec: Record<string, unknown> })
      .spec;
    expect(spec.seLinuxMount).toBe(false);
    expect(spec).not.toHaveProperty("preventPodSchedulingIfMissing");
  });
});

describe("each rule fails on a render that breaks it", () => {
  test.each(breakages)("%s", (_, rule, breakIt, message) => {
    expect(saysOfBroken(renders.standalone, rule, breakIt)).toContain(message);
  });

  test("podSecurityAdmits", () => {
    const docs = clone(renders.namespace);
    (docs[0]?.metadata.labels as Record<string, string>)["pod-security.kubernetes.io/enforce"] =
      "baseline";
    expect(podSecurityAdmits(docs).join()).toContain("privileged");
  });

  test("openshiftAdmits", () => {
    const noBinding = clone(renders.openshift).filter((d) => d.kind !== "RoleBinding");
    expect(openshiftAdmits(noBinding).join()).toContain(
      "no SCC that admits the pods is granted to spiffe-csi-driver",
    );
    const noLabel = clone(renders.openshift);
    (noLabel.find((d) => d.kind === "CSIDriver") as Doc).metadata.labels = {};
    expect(openshiftAdmits(noLabel).join()).toContain("profile label");
    expect(openshiftAdmits(renders.standalone).join()).toContain(
      "no SecurityContextConstraints admits",
    );
  });

  test("workloadFindsSocket", () => {
    const docs = clone(workloadPod);
    const c = (docs[0] as Doc & { spec: PodSpec }).spec.containers[0] as Container;
    (c.env?.[0] as Env).value = "unix:///spiffe-workload-api/agent.sock";
    expect(workloadFindsSocket(docs).join()).toContain("SPIFFE_ENDPOINT_SOCKET");
  });
});

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
        `${driver}.env[ALLOW].value = "spire-server/spire-server,team-a"`,
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
    expect(config.policy.describe()).toBe("spire-server/spire-server, team-a/*");
  });

  test("the standalone deployment and the agent's admit every pod the kubelet names", () => {
    expect(settingsOf(spec(renders.standalone)).config.policy.describe()).toBe("*/*");
    expect(settingsOf(spec(renders.agent)).config.policy.describe()).toBe("*/*");
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
