// The Helm chart's telemetry values render the monitoring component's objects: the same alerts,
// scrapes and dashboard as deploy/kubernetes/monitoring, for the release's own pods, each off by
// default, valid for the Prometheus Operator, and in the packaged chart too.
import { describe, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import {
  chartDir,
  type Doc,
  expectValid,
  helm,
  kustomize,
  one,
  renderChart,
  repo,
  scratch,
  type Workload,
} from "../manifests/rules.ts";

const fixtures = join(repo, "tests", "fixtures");
const component = {
  podMonitor: kustomize(join(fixtures, "monitoring")),
  serviceMonitor: kustomize(join(fixtures, "servicemonitor")),
};
const everything = {
  telemetry: {
    prometheus: { podMonitor: { enabled: true }, prometheusRule: { enabled: true } },
    grafanaDashboard: { enabled: true },
  },
};
const chart = {
  defaults: renderChart({}),
  podMonitor: renderChart(everything),
  serviceMonitor: renderChart({
    telemetry: { prometheus: { serviceMonitor: { enabled: true } } },
  }),
};
const MONITORING_KINDS = ["PrometheusRule", "PodMonitor", "ServiceMonitor"];

type Spec = Record<string, unknown> & { selector?: { matchLabels: Record<string, string> } };
const spec = (doc: Doc) => doc.spec as Spec;
const podLabels = (docs: Doc[]) =>
  (one(docs, "DaemonSet") as Workload).spec.template.metadata.labels;
const alerts = (docs: Doc[]) =>
  (spec(one(docs, "PrometheusRule")) as { groups: { rules: { alert: string; expr: string }[] }[] })
    .groups[0]?.rules ?? [];

describe("the chart's telemetry objects", () => {
  test.each(["prometheusrule.yaml", "dashboard.json"])(
    "files/%s is a copy of deploy/kubernetes/monitoring's (copy it there after a change)",
    (name) => {
      const copy = readFileSync(join(chartDir, "files", name), "utf8");
      expect(copy).toBe(
        readFileSync(join(repo, "deploy", "kubernetes", "monitoring", name), "utf8"),
      );
    },
  );

  test("none with the default values", () => {
    const kinds = chart.defaults.map((doc) => doc.kind);
    for (const kind of MONITORING_KINDS) expect(kinds).not.toContain(kind);
    expect(chart.defaults.some((doc) => doc.metadata.labels?.grafana_dashboard)).toBe(false);
  });

  test("valid against the Prometheus Operator's and the Kubernetes schemas", () => {
    expectValid(chart.podMonitor);
    expectValid(chart.serviceMonitor);
  });

  test("the PrometheusRule is the component's", () => {
    expect(spec(one(chart.podMonitor, "PrometheusRule"))).toEqual(
      spec(one(component.podMonitor, "PrometheusRule")),
    );
  });

  test("the PodMonitor scrapes as the component's does, the release's pods", () => {
    const ours = one(chart.podMonitor, "PodMonitor");
    const theirs = one(component.podMonitor, "PodMonitor");
    expect(spec(ours).podMetricsEndpoints).toEqual(spec(theirs).podMetricsEndpoints);
    expect(Object.keys(spec(ours)).sort()).toEqual(Object.keys(spec(theirs)).sort());
    expect(podLabels(chart.podMonitor)).toMatchObject(spec(ours).selector?.matchLabels ?? {});
    expect(Object.keys(spec(ours).selector?.matchLabels ?? {})).toContain(
      "app.kubernetes.io/instance",
    );
  });

  test("the ServiceMonitor and its Service as the component's, on the chart's health port", () => {
    const ours = one(chart.serviceMonitor, "ServiceMonitor");
    const theirs = one(component.serviceMonitor, "ServiceMonitor");
    expect(spec(ours).endpoints).toEqual(spec(theirs).endpoints);
    const service = one(chart.serviceMonitor, "Service");
    const componentService = one(component.serviceMonitor, "Service");
    const { selector: serviceSelector, ...serviceSpec } = spec(service) as Spec & {
      selector: Record<string, string>;
    };
    const { selector: _, ...componentServiceSpec } = spec(componentService);
    // The same port on both: the driver's health port, 9808 in the chart and in deploy/kubernetes.
    expect(serviceSpec).toEqual(componentServiceSpec);
    expect(podLabels(chart.serviceMonitor)).toMatchObject(serviceSelector);
    expect(service.metadata.labels).toMatchObject(spec(ours).selector?.matchLabels ?? {});
    expect(chart.serviceMonitor.filter((doc) => doc.kind === "PodMonitor")).toEqual([]);
  });

  test("the dashboard ConfigMap holds the component's dashboard, labelled for Grafana's sidecar", () => {
    const dashboard = (docs: Doc[]) =>
      docs.find(
        (doc) => doc.kind === "ConfigMap" && doc.metadata.labels?.grafana_dashboard === "1",
      );
    expect(dashboard(chart.podMonitor)?.data).toEqual(dashboard(component.podMonitor)?.data);
  });

  test("labels and namespaces go where the values say; another namespace selects the driver's", () => {
    const where = { namespace: "monitoring", labels: { release: "kube-prometheus-stack" } };
    const docs = renderChart({
      telemetry: {
        prometheus: {
          podMonitor: { enabled: true, ...where },
          prometheusRule: { enabled: true, ...where },
        },
        grafanaDashboard: { enabled: true, ...where },
      },
    });
    for (const kind of ["PodMonitor", "PrometheusRule"]) {
      expect(one(docs, kind).metadata).toMatchObject(where);
    }
    expect(spec(one(docs, "PodMonitor")).namespaceSelector).toEqual({ matchNames: ["spire"] });
    const map = docs.find((doc) => doc.metadata.labels?.grafana_dashboard === "1");
    expect(map?.metadata).toMatchObject({ namespace: "monitoring", labels: where.labels });
  });

  test("the memory alert's bound follows the memory limit, and is left out without one", () => {
    const bigger = renderChart({ ...everything, resources: { limits: { memory: "512Mi" } } });
    const memory = alerts(bigger).find((rule) => rule.alert === "SpiffeCsiMemoryNearLimit");
    expect(memory?.expr).toContain(`/ ${512 * 1024 * 1024} >`);
    const unlimited = renderChart({ ...everything, resources: { limits: null } });
    expect(alerts(unlimited).map((rule) => rule.alert)).toEqual(
      alerts(chart.podMonitor)
        .map((rule) => rule.alert)
        .filter((name) => name !== "SpiffeCsiMemoryNearLimit"),
    );
  });

  test("a PodMonitor and a ServiceMonitor together are refused: every driver would be scraped twice", () => {
    const both = helm(
      "template",
      "spiffe-csi-driver",
      chartDir,
      "--set",
      "telemetry.prometheus.podMonitor.enabled=true",
      "--set",
      "telemetry.prometheus.serviceMonitor.enabled=true",
    );
    expect(both.code).not.toBe(0);
    expect(both.stderr).toContain("scrape every driver twice");
  });

  test("the packaged chart holds the component's files and renders the same objects", () => {
    const packed = helm("package", chartDir, "-d", join(scratch, "telemetry"));
    expect(packed.code).toBe(0);
    const archive = /saved it to: (\S+)/.exec(packed.stdout)?.[1] ?? "";
    const args = ["template", "spiffe-csi-driver", "-n", "spire"];
    const set = [
      "--set",
      "telemetry.prometheus.podMonitor.enabled=true,telemetry.prometheus.prometheusRule.enabled=true,telemetry.grafanaDashboard.enabled=true",
    ];
    const fromArchive = helm(...args, archive, ...set);
    const fromDir = helm(...args, chartDir, ...set);
    expect(fromArchive.code).toBe(0);
    expect(fromArchive.stdout).toBe(fromDir.stdout);
    expect(fromArchive.stdout).toContain("kind: PrometheusRule");
  });
});
