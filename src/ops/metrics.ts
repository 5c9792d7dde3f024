import { readdirSync, readFileSync } from "node:fs";
import { Counter, Gauge, Histogram, Registry } from "prom-client";
import type { CallRecord } from "../rpc/adapter.ts";
import { codeName } from "../rpc/status.ts";

export type MountOperation = "mount" | "umount";

/** The driver's Prometheus metrics. */
export class Metrics {
  readonly registry = new Registry();
  private readonly requests: Counter<"method" | "code">;
  private readonly durations: Histogram<"method" | "code">;
  private readonly mountFailures: Counter<"operation">;
  private readonly labelFailures: Counter<"mode">;
  private readonly inspectionTimeouts: Counter;

  constructor(version: string, publishedVolumes: () => number) {
    const registers = [this.registry];
    this.requests = new Counter({
      name: "spiffe_csi_rpc_requests_total",
      help: "CSI calls answered, by method and gRPC code.",
      labelNames: ["method", "code"],
      registers,
    });
    this.durations = new Histogram({
      name: "spiffe_csi_rpc_duration_seconds",
      help: "Time to answer a CSI call, by method and gRPC code.",
      labelNames: ["method", "code"],
      buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
      registers,
    });
    this.mountFailures = new Counter({
      name: "spiffe_csi_mount_failures_total",
      help: "mount or umount runs that failed or were killed after the mount timeout.",
      labelNames: ["operation"],
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
    new Gauge({
      name: "spiffe_csi_published_volumes",
      help: "Volumes published on this node now (targets showing the Workload API directory).",
      registers,
      collect() {
        this.set(publishedVolumes());
      },
    });
    new Gauge({
      name: "spiffe_csi_build_info",
      help: "Always 1; the driver's version is a label.",
      labelNames: ["version"],
      registers,
    }).set({ version }, 1);
    registerProcessMetrics(this.registry);
  }

  observeCall(call: CallRecord): void {
    const labels = { method: call.method.name, code: codeName(call.code) };
    this.requests.inc(labels);
    this.durations.observe(labels, call.durationMs / 1000);
  }

  /** Adds spiffe_csi_agent_up, read from `up` (a shared, cached check) when scraped. */
  observeAgent(up: () => Promise<boolean>): void {
    new Gauge({
      name: "spiffe_csi_agent_up",
      help: "1 while the Workload API socket accepts a connection, else 0.",
      registers: [this.registry],
      async collect() {
        this.set((await up()) ? 1 : 0);
      },
    });
  }

  mountFailed(operation: MountOperation): void {
    this.mountFailures.inc({ operation });
  }

  labellingFailed(mode: "permissive" | "enforcing"): void {
    this.labelFailures.inc({ mode });
  }

  inspectionTimedOut(): void {
    this.inspectionTimeouts.inc();
  }
}

/** The usual process_* metrics, read from the process and /proc when scraped. */
function registerProcessMetrics(registry: Registry): void {
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
  gauge(
    "process_heap_bytes",
    "JavaScript heap in use, in bytes.",
    () => process.memoryUsage().heapUsed,
  );
  gauge("process_open_fds", "Open file descriptors.", () => readdirSync("/proc/self/fd").length);
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
