import { readdirSync, readFileSync } from "node:fs";
import type { DescMethod } from "@bufbuild/protobuf";
import type { GenService, GenServiceMethods } from "@bufbuild/protobuf/codegenv2";
import type { Counter, Histogram, Registry } from "prom-client";
import type { VolumeCounts } from "../csi/census.ts";
import { ABNORMAL_REASONS } from "../csi/stats.ts";
import { Controller, Identity, Node } from "../gen/csi/v1/csi_pb.ts";
import type { CallRecord } from "../rpc/adapter.ts";
import { cached } from "./cache.ts";
import { READINESS_KINDS, type ReadinessKind } from "./readiness.ts";

type MountOperation = "mount" | "umount";

// A Kubernetes namespace name: a DNS label of at most 63 characters.
const NAMESPACE_NAME = /^[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?$/;

// The refusal counter's namespace label comes from the kubelet, so a cluster's namespaces bound
// it; this bounds it too against a caller that makes names up. Beyond it, and for a name that is
// no namespace name, the label is OTHER_NAMESPACES (no namespace can be called that).
const MAX_REFUSAL_NAMESPACES = 1000;
const OTHER_NAMESPACES = "(other)";
const NO_NAMESPACE = "(none)";

type MethodLabel = "grpc_type" | "grpc_service" | "grpc_method";

// The volume census looks at every published target: at most once per interval, whatever the
// scrape rate, and its answer is shared by the gauges of a scrape.
const CENSUS_INTERVAL_MS = 1_000;

// gRPC codes as the gRPC ecosystem's server metrics spell them (Go's codes.Code.String()), which
// dashboards and alerts written for go-grpc-prometheus match on. Indexed by the numeric code.
const GRPC_CODES = [
  "OK",
  "Canceled",
  "Unknown",
  "InvalidArgument",
  "DeadlineExceeded",
  "NotFound",
  "AlreadyExists",
  "PermissionDenied",
  "ResourceExhausted",
  "FailedPrecondition",
  "Aborted",
  "OutOfRange",
  "Unimplemented",
  "Internal",
  "Unavailable",
  "DataLoss",
  "Unauthenticated",
] as const;

// The CSI services whose calls are counted. The kubelet's registration calls are logged only.
const CSI_SERVICES: readonly GenService<GenServiceMethods>[] = [Identity, Controller, Node];

// prom-client loads this long after the driver starts (or at the first scrape, if sooner): not on
// the way to the CSI socket, where it would add about 8 ms to the start-up.
const LOAD_AFTER_MS = 1_000;
// The text format's content type, as prom-client's Registry.PROMETHEUS_CONTENT_TYPE says it.
const CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8";

type PromClient = typeof import("prom-client");

/**
 * The driver's Prometheus metrics. What happens before prom-client has loaded (a second after the
 * start, or the first scrape) is recorded as it loads; nothing is lost, and what waits is bounded
 * by the calls of that second.
 */
export class Metrics {
  readonly contentType = CONTENT_TYPE;
  private loading: Promise<PromMetrics> | undefined;
  private loaded: PromMetrics | undefined;
  private readonly pending: ((metrics: PromMetrics) => void)[] = [];
  private readonly refusedNamespaces = new Set<string>();

  /** `volumes` tells what the published volumes' targets show now (a census, see ../csi). */
  constructor(
    private readonly version: string,
    private readonly volumes: () => Promise<VolumeCounts>,
  ) {
    setTimeout(() => void this.load(), LOAD_AFTER_MS).unref();
  }

  /** The registry, once prom-client has loaded. */
  async registry(): Promise<Registry> {
    return (await this.load()).registry;
  }

  /** The metrics in Prometheus's text format. */
  async text(): Promise<string> {
    return (await this.load()).registry.metrics();
  }

  /** Counts a call as started, before its handler runs. */
  callStarted(method: DescMethod): void {
    this.record((metrics) => metrics.started.inc(methodLabels(method)));
  }

  observeCall(call: CallRecord): void {
    const labels = methodLabels(call.method);
    const grpc_code = GRPC_CODES[call.code] ?? String(call.code);
    const seconds = call.durationMs / 1000;
    this.record((metrics) => {
      metrics.handled.inc({ ...labels, grpc_code });
      metrics.handling.observe(labels, seconds);
    });
  }

  /** Adds spiffe_csi_agent_up, read from `up` (a shared, cached check) when scraped. */
  observeAgent(up: () => Promise<boolean>): void {
    this.record((metrics) => metrics.observeAgent(up));
  }

  /** A publish refused by --allow, for a pod of `namespace` (undefined: the kubelet said none). */
  publishRefused(namespace: string | undefined): void {
    let label = namespace ?? NO_NAMESPACE;
    if (namespace !== undefined && !this.refusedNamespaces.has(namespace)) {
      if (NAMESPACE_NAME.test(namespace) && this.refusedNamespaces.size < MAX_REFUSAL_NAMESPACES) {
        this.refusedNamespaces.add(namespace);
      } else {
        label = OTHER_NAMESPACES;
      }
    }
    this.record((metrics) => metrics.refusals.inc({ namespace: label }));
  }

  /** Adds spiffe_csi_readiness_problems, from the kinds of problem /readyz sees (shared checks). */
  observeReadiness(kinds: () => Promise<ReadinessKind[]>): void {
    this.record((metrics) => metrics.observeReadiness(kinds));
  }

  mountFailed(operation: MountOperation): void {
    this.record((metrics) => metrics.mountFailures.inc({ operation }));
  }

  labellingFailed(mode: "permissive" | "enforcing"): void {
    this.record((metrics) => metrics.labelFailures.inc({ mode }));
  }

  inspectionTimedOut(): void {
    this.record((metrics) => metrics.inspectionTimeouts.inc());
  }

  private record(change: (metrics: PromMetrics) => void): void {
    if (this.loaded) change(this.loaded);
    else this.pending.push(change);
  }

  private load(): Promise<PromMetrics> {
    this.loading ??= import("prom-client").then((client) => {
      const metrics = new PromMetrics(client, this.version, this.volumes);
      for (const change of this.pending.splice(0)) change(metrics);
      this.loaded = metrics;
      return metrics;
    });
    return this.loading;
  }
}

/** The metrics as prom-client keeps them. */
class PromMetrics {
  readonly registry: Registry;
  readonly started: Counter<MethodLabel>;
  readonly handled: Counter<MethodLabel | "grpc_code">;
  readonly handling: Histogram<MethodLabel>;
  readonly mountFailures: Counter<"operation">;
  readonly refusals: Counter<"namespace">;
  readonly labelFailures: Counter<"mode">;
  readonly inspectionTimeouts: Counter;

  constructor(
    private readonly client: PromClient,
    version: string,
    volumes: () => Promise<VolumeCounts>,
  ) {
    const { Counter, Gauge, Histogram, Registry } = client;
    this.registry = new Registry();
    const registers = [this.registry];
    // First: a scrape collects in this order, so the process is read before the scrape's own
    // checks (the census, the agent's socket) open descriptors.
    registerProcessMetrics(client, this.registry);
    this.started = new Counter({
      name: "grpc_server_started_total",
      help: "CSI calls started on the server.",
      labelNames: ["grpc_type", "grpc_service", "grpc_method"],
      registers,
    });
    this.handled = new Counter({
      name: "grpc_server_handled_total",
      help: "CSI calls completed on the server, whatever their gRPC code.",
      labelNames: ["grpc_type", "grpc_service", "grpc_method", "grpc_code"],
      registers,
    });
    this.handling = new Histogram({
      name: "grpc_server_handling_seconds",
      help: "Time the server took to answer a CSI call, in seconds.",
      labelNames: ["grpc_type", "grpc_service", "grpc_method"],
      buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
      registers,
    });
    // Every method and code shows from the start, at zero, so that the first failure of a kind
    // is an increase a rate() sees rather than a new series starting at 1.
    for (const service of CSI_SERVICES) {
      for (const method of service.methods) {
        const labels = methodLabels(method);
        this.started.inc(labels, 0);
        for (const grpc_code of GRPC_CODES) this.handled.inc({ ...labels, grpc_code }, 0);
      }
    }
    this.mountFailures = new Counter({
      name: "spiffe_csi_mount_failures_total",
      help: "mount or umount runs that failed or were killed after the mount timeout.",
      labelNames: ["operation"],
      registers,
    });
    this.refusals = new Counter({
      name: "spiffe_csi_publish_refusals_total",
      help: "Publishes the pod policy (--allow) refused, by the pod's namespace.",
      labelNames: ["namespace"],
      registers,
    });
    // Both operations show from the start, at zero.
    this.mountFailures.inc({ operation: "mount" }, 0);
    this.mountFailures.inc({ operation: "umount" }, 0);
    this.labelFailures = new Counter({
      name: "spiffe_csi_selinux_label_failures_total",
      help: "Publishes that found what pods need in the Workload API directory unusable under SELinux, by the node's mode: permissive ones went on, enforcing ones failed.",
      labelNames: ["mode"],
      registers,
    });
    this.labelFailures.inc({ mode: "permissive" }, 0);
    this.labelFailures.inc({ mode: "enforcing" }, 0);
    this.inspectionTimeouts = new Counter({
      name: "spiffe_csi_inspection_timeouts_total",
      help: "Checks of the Workload API directory given up after --inspect-timeout without a sign of progress (a file system that does not answer).",
      registers,
    });
    const census = cached(volumes, CENSUS_INTERVAL_MS);
    new Gauge({
      name: "spiffe_csi_published_volumes",
      help: "Published volumes whose target shows the Workload API directory now.",
      registers,
      async collect() {
        this.set((await census()).published);
      },
    });
    new Gauge({
      name: "spiffe_csi_abnormal_volumes",
      help: "Published volumes whose target does not show the Workload API directory now, by reason.",
      labelNames: ["reason"],
      registers,
      async collect() {
        const { abnormal } = await census();
        for (const reason of ABNORMAL_REASONS) this.set({ reason }, abnormal[reason]);
      },
    });
    new Gauge({
      name: "spiffe_csi_build_info",
      help: "Always 1; the driver's version is a label.",
      labelNames: ["version"],
      registers,
    }).set({ version }, 1);
  }

  observeAgent(up: () => Promise<boolean>): void {
    new this.client.Gauge({
      name: "spiffe_csi_agent_up",
      help: "1 while the Workload API socket accepts a connection, else 0.",
      registers: [this.registry],
      async collect() {
        this.set((await up()) ? 1 : 0);
      },
    });
  }

  observeReadiness(kinds: () => Promise<ReadinessKind[]>): void {
    new this.client.Gauge({
      name: "spiffe_csi_readiness_problems",
      help: "1 for each kind of problem /readyz reports now, else 0.",
      labelNames: ["kind"],
      registers: [this.registry],
      async collect() {
        const now = new Set(await kinds());
        for (const kind of READINESS_KINDS) this.set({ kind }, now.has(kind) ? 1 : 0);
      },
    });
  }
}

function methodLabels(method: DescMethod): Record<MethodLabel, string> {
  return { grpc_type: "unary", grpc_service: method.parent.typeName, grpc_method: method.name };
}

/**
 * The usual process_* metrics, read from the process and /proc when scraped. Not prom-client's
 * collectDefaultMetrics(): under Bun its CPU counter misses the time spent before it was
 * loaded, and it brings nodejs_* metrics that Bun answers with made-up values (V8 heap spaces,
 * a Node.js version), one of which walks the heap on each scrape; its event-loop monitor alone
 * took the idle driver from 1 to 6 ms of CPU a second (docs/operating.md: Metrics).
 */
function registerProcessMetrics(client: PromClient, registry: Registry): void {
  const { Counter, Gauge } = client;
  const registers = [registry];
  const startTime = Date.now() / 1000 - process.uptime();
  const gauge = (name: string, help: string, value: () => number) =>
    new Gauge({
      name,
      help,
      registers,
      collect() {
        this.set(value());
      },
    });
  new Counter({
    name: "process_cpu_seconds_total",
    help: "User and system CPU time spent, in seconds.",
    registers,
    collect() {
      const { user, system } = process.cpuUsage();
      this.reset();
      this.inc((user + system) / 1e6);
    },
  });
  gauge("process_resident_memory_bytes", "Resident memory size, in bytes.", () =>
    process.memoryUsage.rss(),
  );
  // Less one: the listing's own descriptor, open while it is read.
  gauge(
    "process_open_fds",
    "Open file descriptors.",
    () => readdirSync("/proc/self/fd").length - 1,
  );
  gauge("process_max_fds", "Limit on open file descriptors.", () => {
    const limit = /^Max open files\s+(\d+)/m.exec(readFileSync("/proc/self/limits", "utf8"));
    return Number(limit?.[1] ?? Number.NaN);
  });
  gauge(
    "process_start_time_seconds",
    "Start time since the Unix epoch, in seconds.",
    () => startTime,
  );
}
