import { join } from "node:path";
import { status } from "@grpc/grpc-js";
import { auditLogger } from "../csi/audit.ts";
import { controllerHandlers } from "../csi/controller.ts";
import type { NodeEvents } from "../csi/host.ts";
import { identityHandlers } from "../csi/identity.ts";
import { NodeService } from "../csi/node.ts";
import { inspectSource } from "../csi/source.ts";
import { Controller, Identity, Node } from "../gen/csi/v1/csi_pb.ts";
import { Registration } from "../gen/pluginregistration/v1/api_pb.ts";
import type { Inspector } from "../linux/inspector.ts";
import type { Mounter } from "../linux/mounter.ts";
import type { Readiness } from "../ops/health-routes.ts";
import type { Logger } from "../ops/log.ts";
import { LogKey } from "../ops/log-keys.ts";
import { idleCollector } from "../ops/memory.ts";
import type { Metrics } from "../ops/metrics.ts";
import { EXIT_RESTART, SelfRestart } from "../ops/self-restart.ts";
import { registrationHandlers } from "../registration/service.ts";
import { type CallObserver, grpcService } from "../rpc/adapter.ts";
import { rpcLogger } from "../rpc/call-log.ts";
import { InFlightCalls } from "../rpc/in-flight.ts";
import { type ConnectionLimits, StartError, startServer } from "../rpc/server.ts";
import { labellingWanted } from "../selinux/detection.ts";
import type { Labeller, LabelOutcome } from "../selinux/labeller.ts";
import { VERSION } from "../version.ts";
import { Closers } from "./closers.ts";
import type { Config } from "./config.ts";
import { exit } from "./exit.ts";
import { type InspectorOperations, startInspector } from "./inspector.ts";

// Garbage is collected after this long without a call.
const IDLE_COLLECT_MS = 1_000;

// SIGTERM waits for calls in flight for the mount timeout and this much more: a hung `mount` is
// killed by its timeout before the driver exits, so none is left running behind it.
const SHUTDOWN_MARGIN_MS = 1_000;

// How often the driver looks at the Workload API directory by itself, so that a directory
// removed on the node is noticed without waiting for a publish.
const SOURCE_CHECK_INTERVAL_MS = 5_000;

/** What the servers share once the driver is set up. */
interface Driver {
  config: Config;
  logger: Logger;
  node: NodeService;
  /** Every look into the Workload API directory, off the event loop. */
  inspector: Inspector<InspectorOperations>;
  labeller: Labeller | undefined;
  metrics: Metrics | undefined;
  /** Logs a call (the registration socket's calls are only logged). */
  logCall: CallObserver;
  /** Logs, counts and notes a CSI call. */
  observe: CallObserver;
  /** Notes activity, so that garbage is collected once the driver is idle. */
  callMade: () => void;
  limits: ConnectionLimits;
  /** A restart the driver asks for itself (a removed Workload API directory). */
  restart: SelfRestart;
  /** False once the driver is shutting down. */
  serving: boolean;
}

/**
 * Runs the driver until SIGTERM or SIGINT, or until it restarts itself: sets it up, starts each
 * server in turn, each pushing its closer, and on a signal, a restart that is due (or a server
 * that cannot start) closes them in reverse order.
 */
export async function serve(config: Config, mounter: Mounter, logger: Logger): Promise<void> {
  logStart(config, logger);
  const driver = await setUp(config, mounter, logger);
  const closers = new Closers();
  // Closed last: the calls drained before it may still look into the directory.
  closers.push(() => driver.inspector.close());
  try {
    // Health first, so that it is closed last: /healthz says "shutting down" during the drain.
    if (config.healthAddr && driver.metrics) {
      closers.push(await startHealth(driver, config.healthAddr, driver.metrics));
    }
    closers.push(await startCsi(driver));
    closers.push(watchSource(driver));
    if (config.kubeletRegistration) {
      closers.push(await startRegistration(driver, config.kubeletRegistration));
    }
  } catch (error) {
    await closers.closeAll(0);
    if (error instanceof StartError) exit(1, error.message);
    throw error;
  }
  logger.info("serving CSI", { [LogKey.csiSocketPath]: config.csiSocketPath });
  // Start-up leaves garbage too.
  driver.callMade();

  const stop = await Promise.race([
    nextSignal(logger).then((signal) => ({ signal, code: 0 })),
    driver.restart.whenDue().then(() => ({ signal: undefined, code: EXIT_RESTART })),
  ]);
  logger.info("shutting down", {
    ...(stop.signal ? { [LogKey.signal]: stop.signal } : { [LogKey.reason]: "restart" }),
  });
  driver.serving = false;
  await closers.closeAll(config.mountTimeoutMs + SHUTDOWN_MARGIN_MS);
  logger.info("stopped", { [LogKey.exitStatus]: stop.code });
  exit(stop.code);
}

function logStart(config: Config, logger: Logger): void {
  logger.info("starting", {
    [LogKey.version]: VERSION,
    [LogKey.nodeId]: config.nodeId,
    [LogKey.pluginName]: config.pluginName,
    [LogKey.workloadApiSocketDir]: config.workloadApiSocketDir,
    [LogKey.csiSocketPath]: config.csiSocketPath,
  });
  logger.info("pod policy", { [LogKey.allow]: config.policy.describe() });
  if (config.recursiveBind) {
    logger.info("recursive bind on: file systems below the Workload API directory reach pods");
    if (config.allowWritableSubmounts) {
      logger.warn(
        "--allow-writable-submounts: read-write file systems below the Workload API directory reach pods writable, whatever the pod's readOnly says",
      );
    }
  }
}

/** The node service, its labeller and metrics, and what observes each call. */
async function setUp(config: Config, mounter: Mounter, logger: Logger): Promise<Driver> {
  // Metrics are loaded only with --health-addr: a driver without them starts lighter.
  const metrics = config.healthAddr
    ? new (await import("../ops/metrics.ts")).Metrics(VERSION, () => node.volumeCounts())
    : undefined;
  const restart = new SelfRestart(config.selfRestartBackoffMs);
  const inspector = startInspector(
    config.inspectTimeoutMs,
    (timeout) => {
      metrics?.inspectionTimedOut();
      logger.warn("a check of the Workload API directory did not answer; it was given up", {
        [LogKey.error]: timeout.message,
      });
    },
    (left) =>
      logger.warn("checks stuck in the kernel outlive the driver until their file system answers", {
        [LogKey.paths]: left.map(
          (child) => `pid ${child.pid} (${child.state}) at ${child.stuckAt.join(", ")}`,
        ),
      }),
  );
  const labeller = await startLabelling(config, inspector, logger);
  const node = new NodeService({
    nodeId: config.nodeId,
    pluginName: config.pluginName,
    workloadApiSocketDir: config.workloadApiSocketDir,
    allowSymlinkedSocketDir: config.allowSymlinkedSocketDir,
    recursiveBind: config.recursiveBind,
    allowWritableSubmounts: config.allowWritableSubmounts,
    mounter,
    inspector,
    labeller,
    policy: config.policy,
    events: nodeEvents(config, logger, restart, metrics),
  });
  checkSourceAtStart(node, restart, config, logger);
  if (metrics) await node.adoptPublished();
  const logCall = rpcLogger(logger);
  const callMade = idleCollector(IDLE_COLLECT_MS);
  const observe: CallObserver = (call) => {
    logCall(call);
    metrics?.observeCall(call);
    callMade();
  };
  if (metrics) observe.started = (method) => metrics.callStarted(method);
  const limits = {
    maxConnections: config.maxConnections,
    idleTimeoutMs: config.connectionIdleTimeoutMs,
  };
  return {
    config,
    logger,
    node,
    inspector,
    labeller,
    metrics,
    logCall,
    observe,
    callMade,
    limits,
    restart,
    serving: true,
  };
}

/**
 * What the node service's events do: count failures, restart the driver when the directory it
 * sees was removed on the node, and log every publish and unpublish.
 */
function nodeEvents(
  config: Config,
  logger: Logger,
  restart: SelfRestart,
  metrics: Metrics | undefined,
): NodeEvents {
  const logAudit = auditLogger(logger);
  return {
    mountFailed: (operation) => metrics?.mountFailed(operation),
    labelFailed: (mode) => metrics?.labellingFailed(mode),
    sourceRemoved: (problem) => {
      const inMs = restart.request(problem);
      if (inMs === undefined) return;
      // In a container only a restart mounts the node's directory again; the container runtime
      // (or systemd) starts the driver again after it exits.
      logger.error(
        "the Workload API directory the driver sees was removed on the node; restarting so that the container gets the node's current directory",
        {
          [LogKey.path]: config.workloadApiSocketDir,
          [LogKey.reason]: problem,
          [LogKey.restartInMs]: inMs,
          [LogKey.exitStatus]: EXIT_RESTART,
        },
      );
    },
    audit: (record) => {
      logAudit(record);
      if (record.outcome === "refused") metrics?.publishRefused(record.pod.namespace);
    },
  };
}

/**
 * Says at start what a publish would answer about the Workload API directory. Not fatal: the agent
 * may create the directory later, an operator may fix who can change its path, and a publish
 * says what is wrong until then.
 */
function checkSourceAtStart(
  node: NodeService,
  restart: SelfRestart,
  config: Config,
  logger: Logger,
): void {
  const refusal = node.checkSource();
  if (refusal?.code === status.FAILED_PRECONDITION) logger.error(refusal.problem);
  // A removed directory has its own line (onSourceRemoved).
  else if (refusal && restart.pending === undefined) {
    logger.warn("the Workload API socket directory does not exist yet", {
      [LogKey.path]: config.workloadApiSocketDir,
      [LogKey.reason]: refusal.problem,
    });
  }
}

/**
 * Decides once whether the Workload API directory gets SELinux labels, and starts labelling it
 * now, without waiting: a file system in it that hangs must not hold the start. Not fatal: the
 * agent may create the directory later, and a publish reports what is wrong. The labelling code
 * loads only when labelling is on.
 */
async function startLabelling(
  config: Config,
  inspector: Inspector<InspectorOperations>,
  logger: Logger,
): Promise<Labeller | undefined> {
  const wanted = labellingWanted(config.selinuxLabel);
  logger.info(wanted.enabled ? "SELinux labelling on" : "SELinux labelling off", {
    [LogKey.reason]: wanted.reason,
    ...(wanted.enabled && { [LogKey.context]: config.selinuxContext }),
  });
  if (!wanted.enabled) return undefined;
  const { Labeller } = await import("../selinux/labeller.ts");
  const labeller = new Labeller({
    inspector,
    socketDir: config.workloadApiSocketDir,
    context: config.selinuxContext,
    recursiveBind: config.recursiveBind,
    logger,
  });
  void labelSource(config, labeller).then((outcome) => {
    // A permissive node's failure the labeller logs itself.
    if (outcome.kind === "refused" || outcome.kind === "unknown") logger.warn(outcome.problem);
  });
  return labeller;
}

/**
 * Labels the Workload API directory as a publish does: through the directory opened the trusted
 * way (../csi/source.ts), so that what is labelled is what a publish would bind. A refused path
 * is never labelled, it could lead anywhere (checkSourceAtStart says why); nor is a directory
 * that is not there.
 */
async function labelSource(config: Config, labeller: Labeller): Promise<LabelOutcome> {
  const source = inspectSource(config);
  if (!source.ok) return { kind: "usable" };
  try {
    return await labeller.ensure(source.dir.sharedPath);
  } finally {
    source.dir.close();
  }
}

/**
 * /readyz's view besides the agent: a restart that is due, a refused path, labels that are
 * refused or unknown are not ready; labels given on a best-effort basis are a note.
 */
function readiness(driver: Driver): () => Promise<Readiness> {
  const { config, labeller } = driver;
  return async () => {
    const problem = driver.restart.pending ?? refusedPath(config);
    if (problem !== undefined) return { problem };
    if (!labeller) return {};
    const outcome = await labelSource(config, labeller);
    switch (outcome.kind) {
      case "usable":
        return outcome.note === undefined ? {} : { note: outcome.note };
      case "best-effort":
        return { note: outcome.problem };
      case "refused":
      case "unknown":
        return { problem: outcome.problem };
    }
  };
}

/**
 * Why the Workload API directory's path is refused (a link on it, a directory on the way that
 * someone other than root could change), or undefined.
 */
function refusedPath(config: Config): string | undefined {
  const source = inspectSource(config);
  if (source.ok) source.dir.close();
  return !source.ok && source.code === status.FAILED_PRECONDITION ? source.problem : undefined;
}

/** The HTTP health and metrics endpoint (--health-addr). */
async function startHealth(driver: Driver, address: string, metrics: Metrics): Promise<() => void> {
  const { config, logger } = driver;
  const { startHealthServer } = await import("../ops/health.ts");
  let health: Awaited<ReturnType<typeof startHealthServer>>;
  try {
    health = await startHealthServer({
      address,
      workloadApiSocketDir: config.workloadApiSocketDir,
      csiSocketPath: config.csiSocketPath,
      serving: () => driver.serving,
      metrics,
      logger,
      inspector: driver.inspector,
      // Checking repairs too: a socket the agent re-creates while pods run is labelled again
      // within one readiness period, not only at the next publish.
      readiness: readiness(driver),
    });
  } catch (error) {
    throw new StartError(`cannot serve --health-addr ${address}: ${(error as Error).message}`);
  }
  logger.info("serving health and metrics", { [LogKey.healthAddr]: address });
  return () => health.close();
}

/** The CSI services on the CSI socket; closing drains the calls in flight. */
async function startCsi(driver: Driver): Promise<(graceMs: number) => Promise<void>> {
  const { config, observe, logger } = driver;
  const calls = { observe, logger, inFlight: new InFlightCalls() };
  const server = await startServer(
    config.csiSocketPath,
    [
      grpcService(
        Identity,
        identityHandlers(
          config.pluginName,
          config.policy,
          () => driver.restart.pending === undefined,
        ),
        calls,
      ),
      grpcService(Controller, controllerHandlers(), calls),
      grpcService(Node, driver.node.handlers(), calls),
    ],
    logger,
    calls.inFlight,
    driver.limits,
  );
  return (graceMs) => server.close(graceMs);
}

/**
 * Looks at the Workload API directory every few seconds, as a publish would: a directory removed
 * on the node then restarts the driver (onSourceRemoved) before a pod needs it. Other problems are
 * for the publishes to answer.
 */
function watchSource(driver: Driver): () => void {
  const timer = setInterval(() => {
    try {
      driver.node.checkSource();
    } catch (error) {
      driver.logger.debug("checking the Workload API directory failed", {
        [LogKey.error]: (error as Error).message,
      });
    }
  }, SOURCE_CHECK_INTERVAL_MS);
  timer.unref();
  return () => clearInterval(timer);
}

/**
 * The kubelet's plugin registration service (--kubelet-registration-dir). Closed first on the
 * way out, at once: the kubelet stops sending calls to a driver that is leaving.
 */
async function startRegistration(
  driver: Driver,
  { dir, endpoint }: { dir: string; endpoint: string },
): Promise<() => Promise<void>> {
  const { config, logger } = driver;
  const socketPath = join(dir, `${config.pluginName}-reg.sock`);
  const inFlight = new InFlightCalls();
  const server = await startServer(
    socketPath,
    [
      grpcService(Registration, registrationHandlers(config.pluginName, endpoint, logger), {
        // Logged, but not counted among the CSI calls.
        observe: driver.logCall,
        logger,
        // Its own count: closing it must not wait for CSI calls.
        inFlight,
      }),
    ],
    logger,
    inFlight,
    driver.limits,
  );
  logger.info("serving kubelet plugin registration", {
    [LogKey.registrationSocket]: socketPath,
    [LogKey.endpoint]: endpoint,
  });
  return () => server.close(0);
}

/**
 * The first SIGTERM or SIGINT. A second signal must not cut the drain short: a `mount` killed
 * with the driver could still finish after it, and a target created for it would stay behind.
 * SIGKILL is the hard stop.
 */
function nextSignal(logger: Logger): Promise<NodeJS.Signals> {
  return new Promise((resolve) => {
    let stopping = false;
    const onSignal = (received: NodeJS.Signals) => {
      if (stopping) {
        logger.warn("already shutting down; ignoring the signal (SIGKILL stops at once)", {
          [LogKey.signal]: received,
        });
        return;
      }
      stopping = true;
      resolve(received);
    };
    process.on("SIGTERM", onSignal);
    process.on("SIGINT", onSignal);
  });
}
