import { chmodSync, lstatSync, mkdirSync, unlinkSync } from "node:fs";
import { dirname } from "node:path";
import { Server, ServerCredentials, status } from "@grpc/grpc-js";
import { tryConnect } from "./connect.ts";
import type { CallObserver, GrpcService, InFlightCalls } from "./grpc/service.ts";
import { codeName } from "./grpc/status.ts";
import type { Logger } from "./log.ts";
import { isErrno } from "./mount/inspect.ts";

/** A problem that stops the server from starting, said in one line. */
export class StartError extends Error {
  override name = "StartError";
}

export interface RunningServer {
  /** Stops accepting calls, waits up to `graceMs` for calls in flight, removes the socket. */
  close(graceMs: number): Promise<void>;
}

// How long to wait for an existing socket to answer before calling it stale.
const LIVE_SOCKET_PROBE_MS = 1000;
// Strings from a request are cut to this length in logs.
const MAX_LOGGED_CHARS = 256;

export async function startServer(
  socketPath: string,
  services: GrpcService[],
  logger: Logger,
  inFlight: InFlightCalls,
): Promise<RunningServer> {
  await prepareSocketPath(socketPath, logger);
  const server = new Server();
  for (const service of services) {
    server.addService(service.definition, service.implementation);
  }
  // Only root (the kubelet, node-driver-registrar) may connect: create the socket as 0600.
  const umask = process.umask(0o177);
  try {
    await new Promise<void>((resolve, reject) => {
      server.bindAsync(`unix://${socketPath}`, ServerCredentials.createInsecure(), (error) =>
        error
          ? reject(new StartError(`cannot listen on ${socketPath}: ${error.message}`))
          : resolve(),
      );
    });
  } finally {
    process.umask(umask);
  }
  chmodSync(socketPath, 0o600);
  const socketInode = lstatSync(socketPath).ino;

  return {
    async close(graceMs) {
      let timer: Timer | undefined;
      // No new calls from here on; the calls being handled may finish. A client that merely keeps
      // its connection open holds nothing up: once no call is running, the rest is closed.
      const drained = new Promise<void>((resolve) => server.tryShutdown(() => resolve()));
      const expired = new Promise<"expired">((resolve) => {
        timer = setTimeout(() => resolve("expired"), graceMs);
      });
      if ((await Promise.race([drained, inFlight.idle(), expired])) === "expired") {
        logger.warn("calls still running after the grace period; cancelling them", { graceMs });
      }
      clearTimeout(timer);
      server.forceShutdown();
      removeOwnSocket(socketPath, socketInode);
    },
  };
}

/**
 * Makes the socket's directory, and clears a stale socket left by an earlier run that died.
 * Never removes anything but a socket nobody answers on: a regular file, a directory or a live
 * server's socket stops the start instead.
 */
async function prepareSocketPath(socketPath: string, logger: Logger): Promise<void> {
  mkdirSync(dirname(socketPath), { recursive: true, mode: 0o750 });
  let stat: ReturnType<typeof lstatSync>;
  try {
    stat = lstatSync(socketPath);
  } catch (error) {
    if (isErrno(error, "ENOENT")) return;
    throw error;
  }
  if (!stat.isSocket()) {
    throw new StartError(`${socketPath} exists and is not a socket; refusing to replace it`);
  }
  if (await socketAnswers(socketPath)) {
    throw new StartError(
      `another process is serving on ${socketPath}; refusing to start beside it`,
    );
  }
  unlinkSync(socketPath);
  logger.info("removed a stale socket left by an earlier run", { path: socketPath });
}

async function socketAnswers(socketPath: string): Promise<boolean> {
  const outcome = await tryConnect(socketPath, LIVE_SOCKET_PROBE_MS);
  // A server too busy to accept within the probe time is still a live server; only a refused
  // connection means nobody is there.
  return outcome.kind !== "error" || !isErrno(outcome.error, "ECONNREFUSED");
}

function removeOwnSocket(socketPath: string, inode: number): void {
  try {
    if (lstatSync(socketPath).ino === inode) unlinkSync(socketPath);
  } catch (error) {
    if (!isErrno(error, "ENOENT")) throw error;
  }
}

function logged(value: unknown): string | undefined {
  if (typeof value !== "string" || value === "") return undefined;
  return value.length > MAX_LOGGED_CHARS ? `${value.slice(0, MAX_LOGGED_CHARS)}...` : value;
}

/** One log line per call: debug when it succeeded, error when it failed. Never logs secrets. */
export function rpcLogger(logger: Logger): CallObserver {
  return (call) => {
    const request = (call.request ?? {}) as Record<string, unknown>;
    const fields: Record<string, unknown> = {
      method: call.method.name,
      volume_id: logged(request.volumeId),
      target_path: logged(request.targetPath),
      volume_path: logged(request.volumePath),
      code: codeName(call.code),
      duration_ms: Math.round(call.durationMs * 100) / 100,
    };
    for (const key of Object.keys(fields)) {
      if (fields[key] === undefined) delete fields[key];
    }
    if (call.code === status.OK) {
      logger.debug("rpc", fields);
    } else if (call.unexpected !== undefined) {
      logger.error("rpc", fields, call.unexpected);
    } else {
      logger.error("rpc", { ...fields, details: call.details });
    }
  };
}
