import { lstatSync, unlinkSync } from "node:fs";
import { createServer, type Server as NetServer, type Socket } from "node:net";
import { Server, ServerCredentials } from "@grpc/grpc-js";
import { tryConnect } from "../linux/connect.ts";
import { isErrno } from "../linux/errno.ts";
import type { Logger } from "../ops/log.ts";
import { LogKey } from "../ops/log-keys.ts";
import type { GrpcService } from "./adapter.ts";
import type { InFlightCalls } from "./in-flight.ts";
import { SocketFile } from "./socket-file.ts";

/** A problem that stops the server from starting, said in one line. */
export class StartError extends Error {
  override name = "StartError";
}

interface RunningServer {
  /** Stops accepting calls, waits up to `graceMs` for calls in flight, removes the socket. */
  close(graceMs: number): Promise<void>;
}

/** Bounds on the connections to one socket. */
export interface ConnectionLimits {
  /**
   * Connections open at once; beyond them, the oldest that has not sent a byte is closed to make
   * room, or, when each has sent something, the new one as soon as it is accepted.
   */
  maxConnections: number;
  /** A connection with no call for this long is closed (a GOAWAY; clients reconnect). */
  idleTimeoutMs: number;
}

// How long to wait for an existing socket to answer before calling it stale.
const LIVE_SOCKET_PROBE_MS = 1000;

export async function startServer(
  socketPath: string,
  services: GrpcService[],
  logger: Logger,
  inFlight: InFlightCalls,
  limits: ConnectionLimits,
): Promise<RunningServer> {
  const socket = SocketFile.open(
    socketPath,
    (problem) => new StartError(`refusing to serve on ${socketPath}: ${problem}`),
  );
  let listener: NetServer;
  let server: Server;
  try {
    await clearStaleSocket(socket, logger);
    server = new Server({
      "grpc.max_connection_idle_ms": limits.idleTimeoutMs,
      // Nothing reads channelz here; off, grpc-js keeps no per-connection and per-call records.
      "grpc.enable_channelz": 0,
    });
    for (const service of services) {
      server.addService(service.definition, service.implementation);
    }
    listener = await listen(socket, server, limits, logger);
  } catch (error) {
    socket.close();
    throw error;
  }

  return {
    async close(graceMs) {
      let timer: Timer | undefined;
      listener.close();
      // No new calls from here on; the calls being handled may finish. A client that merely keeps
      // its connection open holds nothing up: once no call is running, the rest is closed. The
      // count of calls decides, not tryShutdown's callback: on Bun, an injected connection's
      // session reports itself closed while its calls still run.
      server.tryShutdown(() => {});
      const expired = new Promise<"expired">((resolve) => {
        timer = setTimeout(() => resolve("expired"), graceMs);
      });
      if ((await Promise.race([inFlight.idle(), expired])) === "expired") {
        logger.warn("calls still running after the grace period; cancelling them", {
          [LogKey.graceMs]: graceMs,
        });
      }
      clearTimeout(timer);
      // The last answers are written; let them reach their sockets before the sessions go.
      await new Promise((resolve) => setImmediate(resolve));
      server.forceShutdown();
      socket.remove();
    },
  };
}

/**
 * Listens on the socket with a listener of our own, which hands each connection to grpc-js (its
 * public connection injector): grpc-js has no bound on connections, and every connection costs a
 * file descriptor, so a flood of idle ones would otherwise starve the driver (mount, the health
 * port) of descriptors. Beyond `maxConnections`, the oldest connection that has not sent a byte
 * is closed to make room (the kubelet connects for each call, so it is not kept out by clients
 * that only hold connections), and when every connection has sent something, the new one is
 * closed as soon as it is accepted. grpc-js closes one that carries no call for `idleTimeoutMs`,
 * including one that never sends a byte.
 */
async function listen(
  socket: SocketFile,
  server: Server,
  limits: ConnectionLimits,
  logger: Logger,
): Promise<NetServer> {
  const injector = server.createConnectionInjector(ServerCredentials.createInsecure());
  // The connections open, oldest first.
  const open = new Set<Socket>();
  let warned = false;
  const listener = createServer((connection: Socket) => {
    // A client that resets its connection is its own business: the session sees the close.
    connection.on("error", () => {});
    if (open.size >= limits.maxConnections) {
      if (!warned) {
        warned = true;
        logger.warn("too many connections; closing those that sent nothing, else new ones", {
          [LogKey.socketPath]: socket.path,
          [LogKey.maxConnections]: limits.maxConnections,
        });
      }
      const silent = [...open].find((other) => other.bytesRead === 0);
      if (!silent) {
        connection.destroy();
        return;
      }
      open.delete(silent);
      silent.destroy();
    }
    open.add(connection);
    connection.once("close", () => {
      open.delete(connection);
      if (open.size <= limits.maxConnections / 2) warned = false;
    });
    injector.injectConnection(connection);
  });
  // Only root (the kubelet, node-driver-registrar) may connect: the socket is created as 0600.
  const umask = process.umask(0o177);
  try {
    await new Promise<void>((resolve, reject) => {
      listener.once("error", (error) =>
        reject(new StartError(`cannot listen on ${socket.path}: ${error.message}`)),
      );
      listener.listen(socket.bindPath, resolve);
    });
  } finally {
    process.umask(umask);
  }
  listener.on("error", (error) => {
    logger.error("accepting a connection failed", { [LogKey.socketPath]: socket.path }, error);
  });
  socket.adopt();
  return listener;
}

/**
 * Clears a stale socket left by an earlier run that died. Never removes anything but a socket
 * nobody answers on: a regular file, a directory or a live server's socket stops the start instead.
 */
async function clearStaleSocket(socket: SocketFile, logger: Logger): Promise<void> {
  socket.clearBindPath();
  let stat: ReturnType<typeof lstatSync>;
  try {
    stat = lstatSync(socket.pathInDirectory);
  } catch (error) {
    if (isErrno(error, "ENOENT")) return;
    throw error;
  }
  if (!stat.isSocket()) {
    throw new StartError(`${socket.path} exists and is not a socket; refusing to replace it`);
  }
  if (await socketAnswers(socket.pathInDirectory)) {
    throw new StartError(
      `another process is serving on ${socket.path}; refusing to start beside it`,
    );
  }
  unlinkSync(socket.pathInDirectory);
  logger.info("removed a stale socket left by an earlier run", {
    [LogKey.socketPath]: socket.path,
  });
}

async function socketAnswers(socketPath: string): Promise<boolean> {
  const outcome = await tryConnect(socketPath, LIVE_SOCKET_PROBE_MS);
  // A server too busy to accept within the probe time is still a live server; only a refused
  // connection means nobody is there.
  return outcome.kind !== "error" || !isErrno(outcome.error, "ECONNREFUSED");
}
