import { createServer } from "node:http";
import type { Inspect } from "../linux/inspector.ts";
import { parseAddress } from "./address.ts";
import { type AgentOperations, checkAgent, connects } from "./agent.ts";
import { cached } from "./cache.ts";
import { guardConnections, pacedResponder, throttled } from "./health-guards.ts";
import { healthRoutes, type Readiness } from "./health-routes.ts";
import type { Fields, Logger } from "./log.ts";
import { LogKey } from "./log-keys.ts";
import type { Metrics } from "./metrics.ts";
import { readinessKinds } from "./readiness.ts";

// Each check runs at most once per interval, however many requests ask for it.
const CHECK_INTERVAL_MS = 1_000;
// At most one log line per interval about malformed requests; the others are counted in it.
const MALFORMED_LOG_INTERVAL_MS = 1_000;

interface HealthOptions {
  /** host:port, or :port for every address. */
  address: string;
  workloadApiSocketDir: string;
  /** The CSI socket: /healthz connects to it. */
  csiSocketPath: string;
  /** False once the driver is shutting down. */
  serving: () => boolean;
  /** Runs the agent check off the event loop, bounded in time. */
  inspector: Inspect<AgentOperations>;
  /**
   * Whether the driver is ready besides the agent (a problem: the SELinux labeller's, kind
   * selinux_labels in the metrics), and a note for /readyz. Called at most once per interval, its
   * answer shared by the /readyz requests and the scrapes of that interval, like the other checks.
   */
  readiness?: () => Promise<Readiness>;
  metrics: Metrics;
  logger: Logger;
}

interface HealthServer {
  close(): void;
}

/**
 * /healthz, /readyz and /metrics over HTTP. Answers come from checks shared by concurrent
 * requests and computed at most once a second, asynchronously and bounded in time, on the event
 * loop the gRPC server shares; connections and their request rate are bounded, so no load on
 * this port can hold up a CSI call.
 */
export async function startHealthServer(options: HealthOptions): Promise<HealthServer> {
  const address = parseAddress(options.address);
  if (!address) throw new Error(`--health-addr must be host:port or :port, got ${options.address}`);
  const { logger, readiness } = options;
  const agent = cached(
    () => checkAgent(options.inspector, options.workloadApiSocketDir),
    CHECK_INTERVAL_MS,
  );
  const ready = readiness && cached(readiness, CHECK_INTERVAL_MS);
  const notReady = ready && (async () => (await ready()).problem);
  options.metrics.observeAgent(async () => (await agent()).ok);
  options.metrics.observeReadiness(() => readinessKinds(agent, notReady));
  const malformed = throttled(
    (fields: Fields) => logger.warn("malformed HTTP request refused", fields),
    MALFORMED_LOG_INTERVAL_MS,
  );
  const answer = healthRoutes({
    csiSocketPath: options.csiSocketPath,
    serving: options.serving,
    csiAnswers: cached(() => connects(options.csiSocketPath), CHECK_INTERVAL_MS),
    agent,
    readiness: ready,
    metricsText: cached(() => options.metrics.text(), CHECK_INTERVAL_MS),
    metricsContentType: options.metrics.contentType,
    malformed,
  });
  const server = createServer((request, response) => void respond(request, response));
  const respond = pacedResponder(answer, logger, guardConnections(server, malformed));

  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen({ host: address.hostname, port: address.port }, () => {
      server.off("error", reject);
      resolve();
    });
  });
  // An error after listening (descriptors exhausted on accept, say) must not stop the driver.
  server.on("error", (error) =>
    logger.error("health endpoint error", { [LogKey.error]: error.message }),
  );
  return {
    close() {
      server.close();
      server.closeAllConnections();
    },
  };
}
