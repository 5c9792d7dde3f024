// The monitoring component (deploy/kubernetes/monitoring: alerts, scrape objects, dashboard) as
// kustomize renders it: valid for the Prometheus Operator, every PromQL expression parses, every
// series it names is one the real binary serves, with the labels and values it matches on, and
// every alert's runbook_url names a section of docs/runbooks.md that exists.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdirSync, readFileSync, rmSync } from "node:fs";
import { join } from "node:path";
import { PodMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1";
import { parser } from "@prometheus-io/lezer-promql";
import { startAgent } from "../helpers/agent.ts";
import {
  assertPrivateMountNamespace,
  clients,
  type DriverProcess,
  startDriver,
  tempDir,
} from "../helpers/driver.ts";
import { podVolume, prepareVolume, publishRequest, unpublishRequest } from "../helpers/kubelet.ts";
import { freePort } from "../helpers/port.ts";
import { type Doc, expectValid, kustomize, one, repo } from "../manifests/rules.ts";

const component = join(repo, "deploy", "kubernetes", "monitoring");
const fixtures = join(repo, "tests", "fixtures");

type Rule = {
  alert: string;
  expr: string;
  for?: string;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
};
type Relabeling = {
  action?: string;
  targetLabel?: string;
  sourceLabels?: string[];
  replacement?: string;
};
type Endpoint = { port: string; path: string; relabelings: Relabeling[] };
type Dashboard = {
  panels: { id: number; title: string; type: string; targets?: { expr: string }[] }[];
  templating: { list: { name: string; type: string; query: unknown }[] };
};

const renders = {
  podMonitor: kustomize(join(fixtures, "monitoring")),
  serviceMonitor: kustomize(join(fixtures, "servicemonitor")),
};
const only = (docs: Doc[], kind: string): Doc[] => docs.filter((d) => d.kind === kind);
const rules = (
  one(renders.podMonitor, "PrometheusRule").spec as { groups: { rules: Rule[] }[] }
).groups.flatMap((group) => group.rules);
const dashboardText = readFileSync(join(component, "dashboard.json"), "utf8");
const dashboard = JSON.parse(dashboardText) as Dashboard;

// Grafana replaces its variables before a query reaches Prometheus; the test does the same.
const grafanaVariables = (expr: string) =>
  expr.replaceAll("$__rate_interval", "5m").replaceAll("$node", "node-1");
// label_values(selector, label) is Grafana's, not PromQL: its selector is.
const labelValuesSelector = (query: string) =>
  /^label_values\((.*),\s*\w+\)$/.exec(query)?.[1] ?? query;

const dashboardQueries: { where: string; expr: string }[] = [
  ...dashboard.panels.flatMap((panel) =>
    (panel.targets ?? []).map((target) => ({
      where: `panel ${panel.id} "${panel.title}"`,
      expr: grafanaVariables(target.expr),
    })),
  ),
  ...dashboard.templating.list
    .filter((variable) => variable.type === "query")
    .map((variable) => ({
      where: `variable ${variable.name}`,
      expr: labelValuesSelector((variable.query as { query: string }).query),
    })),
];
const expressions = [
  ...rules.map((rule) => ({ where: `alert ${rule.alert}`, expr: rule.expr })),
  ...dashboardQueries,
];

interface Selector {
  metric: string;
  matchers: { label: string; op: string; value: string }[];
}

/** The PromQL syntax errors in `expr`, each with the text where it is, or none. */
function syntaxErrors(expr: string): string[] {
  const errors: string[] = [];
  parser.parse(expr).iterate({
    enter(node) {
      if (node.type.isError)
        errors.push(`at ${node.from}: "${expr.slice(node.from, node.from + 20)}"`);
    },
  });
  return errors;
}

/** The vector selectors of an expression, and every label name it uses anywhere. */
function analyse(expr: string): { selectors: Selector[]; labels: Set<string> } {
  const selectors: Selector[] = [];
  const labels = new Set<string>();
  const text = (from: number, to: number) => expr.slice(from, to);
  const cursor = parser.parse(expr).cursor();
  do {
    if (cursor.name === "LabelName") labels.add(text(cursor.from, cursor.to));
    if (cursor.name !== "VectorSelector") continue;
    const node = cursor.node;
    const name = node.getChild("Identifier");
    if (!name) throw new Error(`a selector without a metric name in ${expr}`);
    const matchers = node
      .getChild("LabelMatchers")
      ?.getChildren("UnquotedLabelMatcher")
      .map((matcher) => {
        const label = matcher.getChild("LabelName");
        const op = matcher.getChild("MatchOp");
        const value = matcher.getChild("StringLiteral");
        if (!label || !op || !value) throw new Error(`an incomplete matcher in ${expr}`);
        return {
          label: text(label.from, label.to),
          op: text(op.from, op.to),
          value: JSON.parse(text(value.from, value.to)) as string,
        };
      });
    selectors.push({ metric: text(name.from, name.to), matchers: matchers ?? [] });
  } while (cursor.next());
  return { selectors, labels };
}

describe("the Prometheus Operator's objects", () => {
  test("the PrometheusRule, PodMonitor, ServiceMonitor and the rest validate against their schemas", () => {
    expectValid(renders.podMonitor);
    expectValid(renders.serviceMonitor);
  });

  test("a schema violation fails validation (the check can fail)", () => {
    const broken = structuredClone(one(renders.podMonitor, "PodMonitor"));
    (broken.spec as { podMetricsEndpoints: unknown }).podMetricsEndpoints = "health";
    expect(() => new PodMonitor(broken as never).validate()).toThrow();
  });

  test("the ServiceMonitor option replaces the PodMonitor, keeps the rules and the dashboard", () => {
    expect(only(renders.serviceMonitor, "PodMonitor")).toEqual([]);
    expect(one(renders.serviceMonitor, "PrometheusRule")).toEqual(
      one(renders.podMonitor, "PrometheusRule"),
    );
    expect(only(renders.serviceMonitor, "ConfigMap")).toEqual(
      only(renders.podMonitor, "ConfigMap"),
    );
  });

  test("both scrape the driver's health port with the same labels: job spiffe-csi-driver, node", () => {
    const pod = (one(renders.podMonitor, "PodMonitor").spec as { podMetricsEndpoints: Endpoint[] })
      .podMetricsEndpoints;
    const service = (
      one(renders.serviceMonitor, "ServiceMonitor").spec as { endpoints: Endpoint[] }
    ).endpoints;
    expect(pod.length).toBe(1);
    expect(service.length).toBe(1);
    expect(service[0]?.relabelings).toEqual(pod[0]?.relabelings as Relabeling[]);
    expect(pod[0]?.relabelings).toContainEqual({
      action: "replace",
      targetLabel: "job",
      replacement: "spiffe-csi-driver",
    });
    expect(pod[0]?.relabelings).toContainEqual({
      action: "replace",
      sourceLabels: ["__meta_kubernetes_pod_node_name"],
      targetLabel: "node",
    });
    const daemonSet = one(renders.podMonitor, "DaemonSet") as Doc & {
      spec: {
        template: {
          metadata: { labels: Record<string, string> };
          spec: {
            containers: { name: string; ports?: { name: string; containerPort: number }[] }[];
          };
        };
      };
    };
    const driver = daemonSet.spec.template.spec.containers.find(
      (c) => c.name === "spiffe-csi-driver",
    );
    const health = driver?.ports?.find((p) => p.name === "health");
    expect(health).toBeDefined();
    for (const endpoint of [...pod, ...service]) {
      expect(endpoint.port).toBe("health");
      expect(endpoint.path).toBe("/metrics");
    }
    // The PodMonitor selects the DaemonSet's pods; the Service selects them and the
    // ServiceMonitor the Service.
    const podLabels = daemonSet.spec.template.metadata.labels;
    const podSelector = (
      one(renders.podMonitor, "PodMonitor").spec as {
        selector: { matchLabels: Record<string, string> };
      }
    ).selector.matchLabels;
    expect(podLabels).toMatchObject(podSelector);
    const svc = one(renders.serviceMonitor, "Service") as Doc & {
      spec: {
        selector: Record<string, string>;
        ports: { name: string; port: number; targetPort: string; protocol: string }[];
      };
    };
    expect(podLabels).toMatchObject(svc.spec.selector);
    expect(svc.spec.ports).toEqual([
      {
        name: "health",
        port: health?.containerPort as number,
        targetPort: "health",
        protocol: "TCP",
      },
    ]);
    const serviceSelector = (
      one(renders.serviceMonitor, "ServiceMonitor").spec as {
        selector: { matchLabels: Record<string, string> };
      }
    ).selector.matchLabels;
    expect(svc.metadata.labels).toMatchObject(serviceSelector);
  });

  test("the dashboard ConfigMap holds dashboard.json as it is, labelled for Grafana's sidecar", () => {
    const map = one(renders.podMonitor, "ConfigMap") as Doc & { data: Record<string, string> };
    expect(map.metadata.labels?.grafana_dashboard).toBe("1");
    expect(map.metadata.namespace).toBe("spire");
    expect(map.data).toEqual({ "spiffe-csi-driver.json": dashboardText });
  });
});

describe("alerts", () => {
  const runbooks = readFileSync(join(repo, "docs", "runbooks.md"), "utf8");
  // GitHub's anchors: the heading in lower case, spaces as dashes, other punctuation dropped.
  const anchors = [...runbooks.matchAll(/^#{2,6} (.+)$/gm)].map((m) =>
    (m[1] as string)
      .toLowerCase()
      .replace(/[^\p{L}\p{N} _-]/gu, "")
      .replaceAll(" ", "-"),
  );
  const source = /org\.opencontainers\.image\.source="([^"]+)"/.exec(
    readFileSync(join(repo, "Containerfile"), "utf8"),
  )?.[1];

  test("the alerts the issue asks for are there", () => {
    expect(rules.map((rule) => rule.alert).sort()).toEqual(
      [
        "SpiffeCsiAbnormalVolumes",
        "SpiffeCsiAgentUnreachable",
        "SpiffeCsiDriverDown",
        "SpiffeCsiDriverNotScraped",
        "SpiffeCsiMemoryNearLimit",
        "SpiffeCsiMountFailures",
        "SpiffeCsiPublishErrors",
        "SpiffeCsiPublishSlow",
        "SpiffeCsiReadinessProblem",
        "SpiffeCsiUnpublishErrors",
        "SpiffeCsiVersionSkew",
      ].sort(),
    );
  });

  test.each(rules.map((rule) => [rule.alert, rule] as const))(
    "%s: a severity, a summary, a description, and a runbook_url naming its section of docs/runbooks.md",
    (_, rule) => {
      expect(["critical", "warning"]).toContain(rule.labels?.severity as string);
      expect(rule.annotations?.summary).toBeTruthy();
      expect(rule.annotations?.description?.length).toBeGreaterThan(40);
      expect(source).toBeTruthy();
      const url = rule.annotations?.runbook_url ?? "";
      expect(url.startsWith(`${source}/blob/main/docs/runbooks.md#`)).toBe(true);
      expect(anchors).toContain(url.slice(url.indexOf("#") + 1));
    },
  );

  test("docs/runbooks.md has one section per alert, and no other", () => {
    const sections = [...runbooks.matchAll(/^## (.+)$/gm)].map((m) => m[1]);
    expect(sections.sort()).toEqual(rules.map((rule) => rule.alert).sort());
  });

  test("the memory bound is the driver container's memory limit", () => {
    const rule = rules.find((r) => r.alert === "SpiffeCsiMemoryNearLimit") as Rule;
    const bound = Number(/\/ (\d+) >/.exec(rule.expr)?.[1]);
    const daemonSet = one(renders.podMonitor, "DaemonSet") as Doc & {
      spec: {
        template: {
          spec: { containers: { name: string; resources: { limits: { memory: string } } }[] };
        };
      };
    };
    const limit = daemonSet.spec.template.spec.containers.find(
      (c) => c.name === "spiffe-csi-driver",
    )?.resources.limits.memory;
    expect(limit).toMatch(/^\d+Mi$/);
    expect(bound).toBe(Number.parseInt(limit as string, 10) * 1024 * 1024);
  });
});

describe("PromQL", () => {
  test.each(expressions.map((e) => [e.where, e.expr] as const))("%s parses", (_, expr) => {
    expect(syntaxErrors(expr)).toEqual([]);
  });

  test("a broken expression does not parse (the check can fail)", () => {
    expect(syntaxErrors('sum(rate(up{job="x"}[5m]) by (node)')).not.toEqual([]);
    expect(syntaxErrors("up{job=}")).not.toEqual([]);
  });

  test("the dashboard has a fleet view and a per-node view", () => {
    const rows = dashboard.panels.filter((panel) => panel.type === "row").map((r) => r.title);
    expect(rows).toEqual(["Fleet", "Node $node"]);
    expect(dashboard.templating.list.map((v) => v.name)).toEqual(["datasource", "node"]);
  });
});

describe("every series the alerts and the dashboard use, as the binary serves it", () => {
  // Labels Prometheus gives every series of a target: the Operator's for a pod or service
  // endpoint, and the relabelings' (job, node). `up` is Prometheus's own series per target.
  const targetLabels = new Set([
    "namespace",
    "pod",
    "container",
    "endpoint",
    "instance",
    "service",
  ]);
  for (const endpoint of (
    one(renders.podMonitor, "PodMonitor").spec as {
      podMetricsEndpoints: Endpoint[];
    }
  ).podMetricsEndpoints) {
    for (const relabeling of endpoint.relabelings) {
      if (relabeling.targetLabel) targetLabels.add(relabeling.targetLabel);
    }
  }
  const prometheusSeries = new Set(["up"]);

  // name -> label -> values seen, from the real binary's /metrics after a publish and an
  // unpublish, with an agent listening.
  const served = new Map<string, Map<string, Set<string>>>();
  const root = tempDir("monitoring");
  let driver: DriverProcess | undefined;
  let agent: ReturnType<typeof startAgent> | undefined;

  beforeAll(async () => {
    assertPrivateMountNamespace();
    const socketDir = join(root, "agent");
    mkdirSync(socketDir);
    agent = startAgent(socketDir);
    const csiSocketPath = join(root, "csi", "csi.sock");
    const port = freePort();
    driver = await startDriver({
      workloadApiSocketDir: socketDir,
      csiSocketPath,
      args: ["--health-addr", `127.0.0.1:${port}`],
    });
    const { node } = clients(csiSocketPath);
    const volume = podVolume(join(root, "kubelet"));
    prepareVolume(volume);
    await node.nodePublishVolume(publishRequest(volume));
    await node.nodeUnpublishVolume(unpublishRequest(volume));
    node.close();
    const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
    for (const line of text.split("\n")) {
      const sample = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? \S+$/.exec(line);
      if (!sample) continue;
      const labels = served.get(sample[1] as string) ?? new Map<string, Set<string>>();
      served.set(sample[1] as string, labels);
      for (const [, name, value] of (sample[2] ?? "").matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) {
        const values = labels.get(name as string) ?? new Set<string>();
        labels.set(name as string, values.add(value as string));
      }
    }
  }, 120_000);

  afterAll(async () => {
    await driver?.stop();
    agent?.stop(true);
    rmSync(root, { recursive: true, force: true });
  }, 60_000);

  test("the scrape holds the driver's series (the check has something to check)", () => {
    expect(served.get("spiffe_csi_build_info")?.get("version")?.size).toBe(1);
    expect(served.get("grpc_server_handling_seconds_bucket")?.get("grpc_method")).toContain(
      "NodePublishVolume",
    );
  });

  /** What `expr` names that the binary does not serve: metrics, labels, label values. */
  const unserved = (expr: string): string[] => {
    const { selectors, labels } = analyse(expr);
    const missing: string[] = [];
    const allowed = new Set(targetLabels);
    for (const { metric, matchers } of selectors) {
      if (prometheusSeries.has(metric)) continue;
      const series = served.get(metric);
      if (!series) {
        missing.push(`metric ${metric}`);
        continue;
      }
      for (const label of series.keys()) allowed.add(label);
      for (const { label, op, value } of matchers) {
        if (targetLabels.has(label)) continue;
        const values = series.get(label);
        if (!values) {
          missing.push(`${metric}{${label}}`);
          continue;
        }
        // Every value an equality or a plain alternation names is one the driver serves.
        for (const named of op.endsWith("~") ? value.split("|") : [value]) {
          if (/^[\w.]+$/.test(named) && !values.has(named)) {
            missing.push(`${metric}{${label}${op}"${named}"}`);
          }
        }
      }
    }
    for (const label of labels) if (!allowed.has(label)) missing.push(`label ${label}`);
    return missing;
  };

  test.each(expressions.map((e) => [e.where, e.expr] as const))(
    "%s: its metrics, labels and matched values are served",
    (_, expr) => {
      expect(analyse(expr).selectors.length).toBeGreaterThan(0);
      expect(unserved(expr)).toEqual([]);
    },
  );

  test("a metric, a label or a value the binary does not serve is found (the check can fail)", () => {
    expect(
      unserved(
        'sum by (grpc_kode) (rate(grpc_server_handled_total{grpc_method="NodePublish"}[5m])) / spiffe_csi_volumes',
      ),
    ).toEqual([
      'grpc_server_handled_total{grpc_method="NodePublish"}',
      "metric spiffe_csi_volumes",
      "label grpc_kode",
    ]);
  });
});
