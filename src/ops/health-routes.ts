import type { IncomingMessage } from "node:http";
import type { Socket } from "node:net";
import type { Fields } from "./log.ts";
import { LogKey } from "./log-keys.ts";

// A Host header value: a name, IPv4 address or bracketed IPv6 address, with an optional port.
const HOST = /^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._~!$&'()*+,;=%-]+)(?::\d{0,5})?$/;

/** What one request gets back. */
export interface Answer {
  status: number;
  body: string;
  contentType?: string;
}

/** Not ready for `problem`, if given; ready or not, a `note` shows on /readyz. */
export interface Readiness {
  problem?: string;
  note?: string;
}

/** The checks behind the routes, each shared by concurrent requests and run at most once a second. */
interface HealthChecks {
  /** The CSI socket, for messages. */
  csiSocketPath: string;
  /** False once the driver is shutting down. */
  serving: () => boolean;
  /** Undefined when the CSI socket accepts a connection, else why not. */
  csiAnswers: () => Promise<string | undefined>;
  agent: () => Promise<{ ok: true; socket: string } | { ok: false; problem: string }>;
  /** Whether the driver is ready besides the agent, and a note for /readyz. */
  readiness?: () => Promise<Readiness>;
  metricsText: () => Promise<string>;
  metricsContentType: string;
  /** Told of a request refused as malformed (throttled log). */
  malformed: (fields: Fields, from: { socket: Socket }) => void;
}

/** The health port's routes: /healthz, /readyz and /metrics, for GET and HEAD. */
export function healthRoutes(checks: HealthChecks): (request: IncomingMessage) => Promise<Answer> {
  return async (request) => {
    if (request.method !== "GET" && request.method !== "HEAD") {
      return { status: 405, body: "method not allowed: use GET or HEAD" };
    }
    const host = request.headers.host;
    if (host === undefined ? request.httpVersion !== "1.0" : !HOST.test(host)) {
      const reason = host === undefined ? "no Host header" : "invalid Host header";
      checks.malformed({ [LogKey.reason]: reason }, request);
      return { status: 400, body: "bad request: missing or invalid Host header" };
    }
    switch (pathOf(request.url ?? "")) {
      case "/healthz":
        return healthz(checks);
      case "/readyz":
        return readyz(checks);
      case "/metrics":
        return {
          status: 200,
          body: await checks.metricsText(),
          contentType: checks.metricsContentType,
        };
      default:
        return { status: 404, body: "not found: try /healthz, /readyz or /metrics" };
    }
  };
}

/** What the kubelet needs: the CSI socket answers. */
async function healthz(checks: HealthChecks): Promise<Answer> {
  if (!checks.serving()) return { status: 503, body: "the CSI server is shutting down" };
  const refusal = await checks.csiAnswers();
  return refusal === undefined
    ? { status: 200, body: "ok" }
    : {
        status: 503,
        body: `the CSI socket ${checks.csiSocketPath} does not answer: ${refusal}`,
      };
}

/** Ready to publish: nothing else stands in the way, and the agent's socket accepts. */
async function readyz(checks: HealthChecks): Promise<Answer> {
  const { problem, note } = (await checks.readiness?.()) ?? {};
  if (problem !== undefined) return { status: 503, body: problem };
  const check = await checks.agent();
  const noted = note === undefined ? "" : `\nnote: ${note}`;
  return check.ok
    ? { status: 200, body: `ok: ${check.socket} accepts connections${noted}` }
    : { status: 503, body: `${check.problem}${noted}` };
}

/** The path of an origin-form (`/healthz?x`) or absolute-form (`http://h/healthz`) target. */
export function pathOf(target: string): string {
  const path = target.replace(/^[A-Za-z][A-Za-z0-9+.-]*:\/\/[^/]*/, "");
  const end = path.search(/[?#]/);
  return end === -1 ? path : path.slice(0, end);
}
