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
// single client takes the whole budget. The kubelet's probes come from the node's address and
// use one connection each; a Prometheus scraper keeps one.
const MAX_CONNECTIONS_PER_ADDRESS = 64;
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
): void {
  server.maxConnections = MAX_CONNECTIONS;
  server.maxRequestsPerSocket = MAX_REQUESTS_PER_CONNECTION;
  server.keepAliveTimeout = IDLE_TIMEOUT_MS;
  server.headersTimeout = IDLE_TIMEOUT_MS;
  server.requestTimeout = IDLE_TIMEOUT_MS;
  server.setTimeout(IDLE_TIMEOUT_MS, (socket) => socket.destroy());
  limitPerAddress(server, MAX_CONNECTIONS_PER_ADDRESS);
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
}

/**
 * Turns `answer` into a request handler that answers one request at a time per connection,
 * paced, and never lets a failure reach the client beyond a bare 500.
 */
export function pacedResponder(
  answer: (request: IncomingMessage) => Promise<Answer>,
  logger: Logger,
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
 * Closes a connection when `max` others from its remote address are open. Bun's node:http shows
 * a connection to JavaScript at its first request, so that is when it is counted: a connection
 * that never sends a request counts against the server's cap only, until its idle close.
 */
function limitPerAddress(server: Server, max: number): void {
  const open = new Map<string, number>();
  server.on("connection", (socket: Socket) => {
    const from = socket.remoteAddress ?? "";
    const count = open.get(from) ?? 0;
    if (count >= max) {
      socket.destroy();
      return;
    }
    open.set(from, count + 1);
    socket.once("close", () => {
      const left = (open.get(from) ?? 1) - 1;
      if (left > 0) open.set(from, left);
      else open.delete(from);
    });
  });
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
