import type { Server } from "bun";
import { parseAddress } from "./address.ts";
import { checkAgent, connects } from "./agent.ts";
import type { Metrics } from "./metrics.ts";

export interface HealthOptions {
  /** host:port, or :port for every address. */
  address: string;
  workloadApiSocketDir: string;
  /** The CSI socket: /healthz connects to it. */
  csiSocketPath: string;
  /** False once the driver is shutting down. */
  serving: () => boolean;
  metrics: Metrics;
  /** Why the driver cannot serve publishes now, beyond the agent's socket; undefined when none. */
  readinessProblem?: () => string | undefined;
}

/**
 * /healthz, /readyz and /metrics over HTTP. Each answer is computed on request, asynchronously and
 * bounded in time, on the event loop the gRPC server shares, without waiting on any CSI call.
 */
export function startHealthServer(options: HealthOptions): Server<undefined> {
  const address = parseAddress(options.address);
  if (!address) throw new Error(`--health-addr must be host:port or :port, got ${options.address}`);
  const text = (body: string, status = 200) =>
    new Response(`${body}\n`, { status, headers: { "content-type": "text/plain; charset=utf-8" } });
  return Bun.serve({
    ...address,
    async fetch(request) {
      if (request.method !== "GET" && request.method !== "HEAD") {
        return text("method not allowed", 405);
      }
      switch (new URL(request.url).pathname) {
        case "/healthz": {
          if (!options.serving()) return text("the CSI server is shutting down", 503);
          // What the kubelet needs: the socket answers.
          const refusal = await connects(options.csiSocketPath);
          return refusal === undefined
            ? text("ok")
            : text(`the CSI socket ${options.csiSocketPath} does not answer: ${refusal}`, 503);
        }
        case "/readyz": {
          const problem = options.readinessProblem?.();
          if (problem) return text(problem, 503);
          const agent = await checkAgent(options.workloadApiSocketDir);
          return agent.ok
            ? text(`ok: ${agent.socket} accepts connections`)
            : text(agent.problem, 503);
        }
        case "/metrics":
          return new Response(await options.metrics.registry.metrics(), {
            headers: { "content-type": options.metrics.registry.contentType },
          });
        default:
          return text("not found: try /healthz, /readyz or /metrics", 404);
      }
    },
  });
}
