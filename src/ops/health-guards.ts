import type { IncomingMessage, Server, ServerResponse } from "node:http";
import type { Socket } from "node:net";
import { type Answer, pathOf } from "./health-routes.ts";
import type { Fields, Logger } from "./log.ts";
import { LogKey } from "./log-keys.ts";

// A keep-alive connection gets at most one answer per interval; a faster request waits for its
// turn, so a client looping on one connection costs one answer a second. The kubelet's probes
// open a connection each and are answered at once.
const PACE_MS = 1_000;
// Connections beyond this are refused until others close: it bounds memory and descriptors.
const MAX_CONNECTIONS = 3_072;
// Connections from one remote address beyond this are closed at their first request, so that no
// single client takes the whole budget; a probe's is answered first (see limitPerAddress). The
// kubelet's probes come from the node's address and use one connection each; a Prometheus
// scraper keeps one.
const MAX_CONNECTIONS_PER_ADDRESS = 64;
// Probes answered beyond an address's cap, at most, each second: many times what the kubelet
// sends from the node's address, and few enough that clients reconnecting as soon as they are
// answered cost what refused ones do.
const PROBES_BEYOND_CAP_PER_SECOND = 10;
// What the kubelet's probes ask for.
const PROBE_PATHS = new Set(["/healthz", "/readyz"]);
// A connection that sends nothing for this long (silent, slow headers, idle keep-alive) is closed.
const IDLE_TIMEOUT_MS = 5_000;
// A connection is closed after this many answers, so that no client holds one for ever.
const MAX_REQUESTS_PER_CONNECTION = 100;

const TEXT = "text/plain; charset=utf-8";

/**
 * Bounds what connections may cost the server: how many, how many from one address, how long
 * idle, how many requests each; and answers what the HTTP parser refuses without a body.
 */
export function guardConnections(
  server: Server,
  malformed: (fields: Fields, from: { socket: Socket }) => void,
): CapCheck {
  server.maxConnections = MAX_CONNECTIONS;
  server.maxRequestsPerSocket = MAX_REQUESTS_PER_CONNECTION;
  server.keepAliveTimeout = IDLE_TIMEOUT_MS;
  server.headersTimeout = IDLE_TIMEOUT_MS;
  server.requestTimeout = IDLE_TIMEOUT_MS;
  server.setTimeout(IDLE_TIMEOUT_MS, (socket) => socket.destroy());
  const capCheck = limitPerAddress(server, MAX_CONNECTIONS_PER_ADDRESS);
  // What the HTTP parser refuses never reaches a handler: answer it here, without a body.
  server.on("clientError", (error: NodeJS.ErrnoException, socket: Socket) => {
    const status = CLIENT_ERRORS[error.code ?? ""];
    if (status === undefined || !socket.writable) {
      socket.destroy();
      return;
    }
    malformed({ [LogKey.reason]: error.code }, { socket });
    socket.end(`HTTP/1.1 ${status}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n`);
  });
  return capCheck;
}

/**
 * What to do with a request to `path` on a connection, as far as its address's cap goes: go on
 * (the connection is within the cap), answer it and close the connection, or close it unanswered.
 */
export type CapCheck = (socket: Socket, path: string) => "within" | "answer-and-close" | "close";

/**
 * Turns `answer` into a request handler that answers one request at a time per connection,
 * paced, and never lets a failure reach the client beyond a bare 500.
 */
export function pacedResponder(
  answer: (request: IncomingMessage) => Promise<Answer>,
  logger: Logger,
  capCheck: CapCheck,
): (request: IncomingMessage, response: ServerResponse) => Promise<void> {
  const turns = new WeakMap<Socket, number>();
  const pace = async (socket: Socket) => {
    const now = performance.now();
    const turn = Math.max(now, turns.get(socket) ?? now);
    turns.set(socket, turn + PACE_MS);
    if (turn > now) await Bun.sleep(turn - now);
  };

  // Sockets whose request is not answered yet. Bun's node:http parses every request a client
  // pipelines in one write at once, each an object and a pending answer (2,000 requests on each
  // of 400 connections took 2.7 GB); destroying the socket at its second unanswered request
  // stops the parsing of the rest of what it sent. No HTTP client in use pipelines: the kubelet's
  // probes send one request a connection, a scraper waits for each answer.
  const unanswered = new WeakSet<Socket>();
  return async (request, response) => {
    const { socket } = request;
    if (socket.destroyed) return;
    if (unanswered.has(socket)) {
      socket.destroy();
      return;
    }
    const cap = capCheck(socket, pathOf(request.url ?? ""));
    if (cap === "close") {
      socket.destroy();
      return;
    }
    if (cap === "answer-and-close") {
      response.setHeader("connection", "close");
      response.once("finish", () => socket.end());
    }
    unanswered.add(socket);
    try {
      await pace(socket);
      if (response.destroyed) return;
      send(response, await answer(request));
    } catch (error) {
      // A bug, never the client's doing: one line, and nothing of it in the answer.
      logger.error("health endpoint request failed", {
        [LogKey.path]: pathOf(request.url ?? ""),
        [LogKey.error]: (error as Error).message,
      });
      if (!response.headersSent) send(response, { status: 500, body: "internal error" });
      else response.destroy();
    } finally {
      unanswered.delete(socket);
    }
  };
}

/**
 * Counts the connections of each remote address; one that comes while `max` others from its
 * address are open is not counted among them, and is closed at its first request, unanswered,
 * unless that request is a probe's. Whoever holds an address's connections (any local user, or a
 * hostNetwork pod, shares the node's address with the kubelet's probes) then cannot starve the
 * probes: a probe beyond the cap is answered at once (its connection's first request) and its
 * connection closed, so it holds nothing, up to PROBES_BEYOND_CAP_PER_SECOND for the address.
 *
 * Bun's node:http shows a connection to JavaScript at its first request, and runs that request's
 * handler right after, before any setImmediate callback: one beyond the cap that has no request
 * by then (one that sent nothing, shown after about a second) is closed at once.
 */
function limitPerAddress(server: Server, max: number): CapCheck {
  const open = new Map<string, number>();
  const beyond = new WeakSet<Socket>();
  const requested = new WeakSet<Socket>();
  const probesBeyond = new Map<string, { second: number; answered: number }>();
  // Connections beyond an address's cap still open (waiting for their first request, or being
  // answered): at most `max` more, so that a flood's descriptors stay bounded by twice the cap.
  const waitingBeyond = new Map<string, number>();
  server.on("request", (request: IncomingMessage) => requested.add(request.socket));
  server.on("connection", (socket: Socket) => {
    const from = socket.remoteAddress ?? "";
    const count = open.get(from) ?? 0;
    if (count >= max) {
      const waiting = waitingBeyond.get(from) ?? 0;
      if (waiting >= max) {
        socket.destroy();
        return;
      }
      waitingBeyond.set(from, waiting + 1);
      socket.once("close", () => {
        const left = (waitingBeyond.get(from) ?? 1) - 1;
        if (left > 0) waitingBeyond.set(from, left);
        else waitingBeyond.delete(from);
      });
      beyond.add(socket);
      setImmediate(() => {
        if (!requested.has(socket)) socket.destroy();
      });
      return;
    }
    open.set(from, count + 1);
    socket.once("close", () => {
      const left = (open.get(from) ?? 1) - 1;
      if (left > 0) open.set(from, left);
      else {
        open.delete(from);
        probesBeyond.delete(from);
      }
    });
  });
  return (socket, path) => {
    if (!beyond.has(socket)) return "within";
    if (!PROBE_PATHS.has(path)) return "close";
    const from = socket.remoteAddress ?? "";
    const second = Math.floor(performance.now() / 1_000);
    const budget = probesBeyond.get(from);
    if (budget === undefined || budget.second !== second) {
      probesBeyond.set(from, { second, answered: 1 });
      return "answer-and-close";
    }
    if (budget.answered >= PROBES_BEYOND_CAP_PER_SECOND) return "close";
    budget.answered++;
    return "answer-and-close";
  };
}

function send(response: ServerResponse, { status, body, contentType = TEXT }: Answer): void {
  const text = body.endsWith("\n") ? body : `${body}\n`;
  response.writeHead(status, {
    "content-type": contentType,
    "content-length": Buffer.byteLength(text),
    "cache-control": "no-store",
  });
  response.end(text);
}

// Parser refusals worth an answer; anything else (a reset, say) just closes the connection.
const CLIENT_ERRORS: Record<string, string> = {
  HPE_HEADER_OVERFLOW: "431 Request Header Fields Too Large",
  ERR_HTTP_REQUEST_TIMEOUT: "408 Request Timeout",
  HPE_INVALID_METHOD: "400 Bad Request",
  HPE_INVALID_URL: "400 Bad Request",
  HPE_INVALID_CONSTANT: "400 Bad Request",
  HPE_INVALID_VERSION: "400 Bad Request",
  HPE_INVALID_HEADER_TOKEN: "400 Bad Request",
  HPE_INVALID_CONTENT_LENGTH: "400 Bad Request",
  HPE_INVALID_CHUNK_SIZE: "400 Bad Request",
  HPE_INVALID_TRANSFER_ENCODING: "400 Bad Request",
  HPE_UNEXPECTED_CONTENT_LENGTH: "400 Bad Request",
  HPE_LF_EXPECTED: "400 Bad Request",
  HPE_CR_EXPECTED: "400 Bad Request",
  HPE_STRICT: "400 Bad Request",
};

/**
 * Logs one line per `intervalMs` at most, so that a flood of bad requests cannot flood the log;
 * each line counts the requests not logged since the previous one.
 */
export function throttled(
  log: (fields: Fields) => void,
  intervalMs: number,
): (fields: Fields, from: { socket: Socket }) => void {
  let last = Number.NEGATIVE_INFINITY;
  let unlogged = 0;
  return (fields, { socket }) => {
    const now = performance.now();
    if (now - last < intervalMs) {
      unlogged++;
      return;
    }
    last = now;
    log({
      ...fields,
      [LogKey.remote]: socket.remoteAddress,
      [LogKey.unloggedSinceLast]: unlogged,
    });
    unlogged = 0;
  };
}
