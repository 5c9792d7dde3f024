import { existsSync } from "node:fs";
import { join } from "node:path";
import { type ArgsDef, defineCommand } from "citty";
import { type Config, ConfigError, type RawSettings, resolveConfig } from "./config.ts";
import { controllerHandlers, identityHandlers } from "./driver/identity.ts";
import { NodeService } from "./driver/node.ts";
import { registrationHandlers } from "./driver/registration.ts";
import { unknownFlags } from "./flags.ts";
import { Controller, Identity, Node } from "./gen/csi/v1/csi_pb.ts";
import { Registration } from "./gen/pluginregistration/v1/api_pb.ts";
import { type CallObserver, grpcService, InFlightCalls } from "./grpc/service.ts";
import type { HealthServer } from "./health.ts";
import { createLogger, type Logger } from "./log.ts";
import { idleCollector } from "./memory.ts";
import { CommandMounter } from "./mount/mounter.ts";
import { DEFAULT_SELINUX_CONTEXT, Labeler, labellingWanted } from "./selinux.ts";
import { rpcLogger, StartError, startServer } from "./server.ts";
import { VERSION } from "./version.ts";

// Garbage is collected after this long without a call.
const IDLE_COLLECT_MS = 1_000;

// SIGTERM waits for calls in flight for the mount timeout and this much more: a hung `mount` is
// killed by its timeout before the driver exits, so none is left running behind it.
const SHUTDOWN_MARGIN_MS = 1_000;

export const args = {
  "workload-api-socket-dir": {
    type: "string",
    description:
      "Directory holding the SPIFFE Workload API socket, bind-mounted into pods (required)",
    valueHint: "dir",
  },
  "csi-socket-path": {
    type: "string",
    description: "Unix socket the CSI services are served on",
    default: "/spiffe-csi/csi.sock",
    valueHint: "path",
  },
  "plugin-name": {
    type: "string",
    description: "CSI plugin name (domain notation, at most 63 characters)",
    default: "csi.spiffe.io",
  },
  "node-id": {
    type: "string",
    description:
      "Kubernetes node name; when unset it is read from the variable named by -node-id-env",
  },
  "node-id-env": {
    type: "string",
    description: "Environment variable holding the node name",
    default: "MY_NODE_NAME",
  },
  "log-level": {
    type: "string",
    description: "error, warn, info, debug (one line per RPC) or trace",
    default: "info",
  },
  "log-format": { type: "string", description: "text or json", default: "text" },
  "mount-timeout": {
    type: "string",
    description: "Seconds one mount or umount may run before it is killed",
    default: "30",
  },
  "max-connections": {
    type: "string",
    description:
      "Connections open at once on each of the driver's sockets; more are closed when accepted",
    default: "256",
  },
  "connection-idle-timeout": {
    type: "string",
    description: "Seconds a connection with no call stays open",
    default: "60",
  },
  "kubelet-registration-dir": {
    type: "string",
    description:
      "Register with the kubelet without node-driver-registrar: its plugins_registry directory (e.g. /var/lib/kubelet/plugins_registry); off when unset",
    valueHint: "dir",
  },
  "kubelet-registration-path": {
    type: "string",
    description:
      "The CSI socket's path as the kubelet sees it, for --kubelet-registration-dir (default: -csi-socket-path)",
    valueHint: "path",
  },
  "health-addr": {
    type: "string",
    description: "host:port (or :port) for HTTP /healthz, /readyz and /metrics; off when unset",
    valueHint: "addr",
  },
  "selinux-label": {
    type: "string",
    description:
      "Label the Workload API directory and its entries for containers (SELinux): auto (when the node runs SELinux), on or off",
    default: "auto",
  },
  "selinux-context": {
    type: "string",
    description: "The SELinux label they get (user:role:type:level)",
    default: DEFAULT_SELINUX_CONTEXT,
  },
  "recursive-bind": {
    type: "boolean",
    description:
      "Bind the Workload API directory with the file systems mounted below it (e.g. SPIFFEFS), and let ones mounted later reach the pods (--recursive-bind or --recursive-bind=true|false)",
  },
  "allow-writable-submounts": {
    type: "boolean",
    description:
      "With --recursive-bind: also publish when a file system below the directory is read-write (pods get it writable)",
  },
} satisfies ArgsDef;

/** Reads the parsed flags into a Config; a problem is a ConfigError. */
export function configFromArgs(
  parsed: Record<string, unknown>,
  env: Record<string, string | undefined>,
): Config {
  const unknown = unknownFlags(parsed, args);
  if (unknown.length > 0) {
    throw new ConfigError(`unknown flag --${unknown[0]} (see --help)`);
  }
  const positionals = parsed._ as string[];
  if (positionals.length > 0) {
    throw new ConfigError(`unexpected argument ${JSON.stringify(positionals[0])} (see --help)`);
  }
  const text = (name: keyof typeof args) => {
    const value = parsed[name];
    if (value === undefined) return undefined;
    // A flag given with no value (`-node-id` at the end, `--no-node-id`) is a mistake, as Go's
    // flag package says; silently falling back to a default would hide it.
    if (typeof value !== "string" || value === "") {
      throw new ConfigError(`flag -${name} needs a value`);
    }
    return value;
  };
  // Boolean flags take no separate value (`-flag false` is a stray argument, as in Go), only
  // `-flag` or `-flag=true|false`.
  const flag = (name: keyof typeof args) => {
    const value = parsed[name];
    if (value === undefined) return false;
    if (typeof value !== "boolean") throw new ConfigError(`flag -${name} takes no value`);
    return value;
  };
  const raw: RawSettings = {
    workloadApiSocketDir: text("workload-api-socket-dir"),
    csiSocketPath: text("csi-socket-path") ?? "",
    pluginName: text("plugin-name") ?? "",
    nodeId: text("node-id"),
    nodeIdEnv: text("node-id-env") ?? "",
    logLevel: text("log-level") ?? "",
    logFormat: text("log-format") ?? "",
    mountTimeout: text("mount-timeout") ?? "",
    maxConnections: text("max-connections") ?? "",
    connectionIdleTimeout: text("connection-idle-timeout") ?? "",
    healthAddr: text("health-addr"),
    kubeletRegistrationDir: text("kubelet-registration-dir"),
    kubeletRegistrationPath: text("kubelet-registration-path"),
    selinuxLabel: text("selinux-label") ?? "",
    selinuxContext: text("selinux-context") ?? "",
    recursiveBind: flag("recursive-bind"),
    allowWritableSubmounts: flag("allow-writable-submounts"),
  };
  return resolveConfig(raw, env);
}

/** Exits with `code` after one line on stderr: the way every start-up problem ends. */
function exitWith(code: number, message: string): never {
  process.stderr.write(`spiffe-csi-driver: ${message}\n`);
  process.exit(code);
}

export const main = defineCommand({
  meta: {
    name: "spiffe-csi-driver",
    version: VERSION,
    description:
      "CSI node plugin that bind-mounts the SPIFFE Workload API directory into pods. Also: `spiffe-csi-driver probe --help`, `spiffe-csi-driver doctor --help`",
  },
  args,
  async run({ args: parsed }) {
    let config: Config;
    try {
      config = configFromArgs(parsed as Record<string, unknown>, process.env);
    } catch (error) {
      if (error instanceof ConfigError) exitWith(2, error.message);
      throw error;
    }
    const mountPath = Bun.which("mount");
    const umountPath = Bun.which("umount");
    if (!mountPath || !umountPath) {
      exitWith(
        1,
        `cannot find ${mountPath ? "umount" : "mount"} on PATH (${process.env.PATH ?? ""})`,
      );
    }
    const logger = createLogger(config.logLevel, config.logFormat);
    await serve(config, new CommandMounter(mountPath, umountPath, config.mountTimeoutMs), logger);
  },
});

/**
 * Decides once whether the Workload API directory gets SELinux labels, and labels it now. Not
 * fatal: the agent may create the directory later, and a publish reports what is wrong.
 */
function startLabelling(config: Config, logger: Logger): Labeler | undefined {
  const wanted = labellingWanted(config.selinuxLabel);
  logger.info(wanted.enabled ? "SELinux labelling on" : "SELinux labelling off", {
    reason: wanted.reason,
    ...(wanted.enabled && { context: config.selinuxContext }),
  });
  if (!wanted.enabled) return undefined;
  const labeler = new Labeler(config.workloadApiSocketDir, config.selinuxContext, logger);
  const problem = labeler.ensure();
  if (problem) logger.warn(problem);
  return labeler;
}

async function serve(config: Config, mounter: CommandMounter, logger: Logger): Promise<void> {
  logger.info("starting", {
    version: VERSION,
    node_id: config.nodeId,
    plugin_name: config.pluginName,
    workload_api_socket_dir: config.workloadApiSocketDir,
    csi_socket_path: config.csiSocketPath,
  });
  if (!existsSync(config.workloadApiSocketDir)) {
    // Not fatal: the agent may create it later. Publishing answers UNAVAILABLE until then.
    logger.warn("the Workload API socket directory does not exist yet", {
      path: config.workloadApiSocketDir,
    });
  }
  const labeler = startLabelling(config, logger);
  if (config.recursiveBind) {
    logger.info("recursive bind on: file systems below the Workload API directory reach pods");
    if (config.allowWritableSubmounts) {
      logger.warn(
        "--allow-writable-submounts: read-write file systems below the Workload API directory reach pods writable, whatever the pod's readOnly says",
      );
    }
  }
  // Metrics are loaded only with --health-addr: a driver without them starts lighter.
  const metrics = config.healthAddr
    ? new (await import("./metrics.ts")).Metrics(VERSION, () => node.publishedVolumes)
    : undefined;
  const node = new NodeService({
    nodeId: config.nodeId,
    pluginName: config.pluginName,
    workloadApiSocketDir: config.workloadApiSocketDir,
    mounter,
    onMountFailure: (operation) => metrics?.mountFailed(operation),
    labeler,
    recursiveBind: config.recursiveBind,
    allowWritableSubmounts: config.allowWritableSubmounts,
  });
  if (metrics) node.adoptPublished();
  const logCall = rpcLogger(logger);
  const callMade = idleCollector(IDLE_COLLECT_MS);
  const observe: CallObserver = (call) => {
    logCall(call);
    metrics?.observeCall(call);
    callMade();
  };
  if (metrics) observe.started = (method) => metrics.callStarted(method);
  const inFlight = new InFlightCalls();
  const limits = {
    maxConnections: config.maxConnections,
    idleTimeoutMs: config.connectionIdleTimeoutMs,
  };
  let server: Awaited<ReturnType<typeof startServer>>;
  try {
    server = await startServer(
      config.csiSocketPath,
      [
        grpcService(Identity, identityHandlers(config.pluginName), observe, inFlight),
        grpcService(Controller, controllerHandlers(), observe, inFlight),
        grpcService(Node, node.handlers(), observe, inFlight),
      ],
      logger,
      inFlight,
      limits,
    );
  } catch (error) {
    if (error instanceof StartError) exitWith(1, error.message);
    throw error;
  }
  let serving = true;
  let health: HealthServer | undefined;
  if (config.healthAddr && metrics) {
    const { startHealthServer } = await import("./health.ts");
    try {
      health = await startHealthServer({
        address: config.healthAddr,
        workloadApiSocketDir: config.workloadApiSocketDir,
        csiSocketPath: config.csiSocketPath,
        serving: () => serving,
        metrics,
        logger,
        // Checking repairs too: a socket the agent re-creates while pods run is labelled again
        // within one readiness period, not only at the next publish.
        readinessProblem: labeler && (() => labeler.ensure()),
      });
    } catch (error) {
      await server.close(0);
      exitWith(1, `cannot serve --health-addr ${config.healthAddr}: ${(error as Error).message}`);
    }
    logger.info("serving health and metrics", { health_addr: config.healthAddr });
  }

  let registration: Awaited<ReturnType<typeof startServer>> | undefined;
  if (config.kubeletRegistration) {
    const { dir, endpoint } = config.kubeletRegistration;
    const socketPath = join(dir, `${config.pluginName}-reg.sock`);
    try {
      registration = await startServer(
        socketPath,
        [
          grpcService(
            Registration,
            registrationHandlers(config.pluginName, endpoint, logger),
            // Logged, but not counted among the CSI calls.
            logCall,
          ),
        ],
        logger,
        // Its own count: closing it must not wait for CSI calls.
        new InFlightCalls(),
        limits,
      );
    } catch (error) {
      health?.close();
      await server.close(0);
      if (error instanceof StartError) exitWith(1, error.message);
      throw error;
    }
    logger.info("serving kubelet plugin registration", {
      registration_socket: socketPath,
      endpoint,
    });
  }
  logger.info("serving CSI", { csi_socket_path: config.csiSocketPath });
  // Start-up leaves garbage too.
  callMade();

  const signal = await new Promise<NodeJS.Signals>((resolve) => {
    let stopping = false;
    // A second signal must not cut the drain short: a `mount` killed with the driver could still
    // finish after it, and a target created for it would stay behind. SIGKILL is the hard stop.
    const onSignal = (received: NodeJS.Signals) => {
      if (stopping) {
        logger.warn("already shutting down; ignoring the signal (SIGKILL stops at once)", {
          signal: received,
        });
        return;
      }
      stopping = true;
      resolve(received);
    };
    process.on("SIGTERM", onSignal);
    process.on("SIGINT", onSignal);
  });
  logger.info("shutting down", { signal });
  serving = false;
  // The registration socket goes first: the kubelet stops sending calls to a driver that is
  // leaving.
  await registration?.close(0);
  await server.close(config.mountTimeoutMs + SHUTDOWN_MARGIN_MS);
  health?.close();
  logger.info("stopped");
  process.exit(0);
}
