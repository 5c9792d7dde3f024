import {
  closeSync,
  constants,
  type Dirent,
  fstatSync,
  lstatSync,
  opendirSync,
  openSync,
} from "node:fs";
import { join } from "node:path";
import { tryConnect } from "../linux/connect.ts";
import { O_PATH } from "../linux/descriptors.ts";
import { isErrno } from "../linux/errno.ts";
import { changedLately } from "../linux/file-operations.ts";
import { type Inspect, InspectionError } from "../linux/inspector.ts";

// How long a connection to the agent's socket may take before it counts as not answering.
const CONNECT_TIMEOUT_MS = 1000;
// Sockets kept from one listing, and tried at most in one check: a directory full of dead
// sockets costs a bounded time.
const MAX_SOCKETS = 64;
const MAX_TRIED = 8;

export type AgentCheck =
  | { ok: true; socket: string }
  | {
      ok: false;
      /** "unknown": the check did not answer in time (a file system that hangs). */
      reason: "missing" | "stale" | "unreadable" | "no-socket" | "refused" | "unknown";
      problem: string;
    };

export type AgentOperations = { agentDirectory: typeof inspectAgentDirectory };

/**
 * Whether the SPIFFE agent is there: the Workload API directory exists and holds a socket that
 * accepts a connection. The look into the directory runs in the inspector's child
 * (../linux/inspector.ts), bounded in time; a check that does not answer is "unknown".
 */
export async function checkAgent(
  inspector: Inspect<AgentOperations>,
  socketDir: string,
): Promise<AgentCheck> {
  try {
    return await inspector.run(
      "agentDirectory",
      { dir: socketDir, name: socketDir },
      `checking the Workload API socket directory ${socketDir}`,
    );
  } catch (error) {
    if (!(error instanceof InspectionError)) throw error;
    return { ok: false, reason: "unknown", problem: `unknown: ${error.message}` };
  }
}

let listed: { key: string; sockets: string[] } | undefined;

/**
 * In the inspector's child: the directory's sockets, from the listing's file types (no stat of
 * each entry, so nothing mounted in the directory is ever asked), kept while the directory is
 * unchanged, and a connection to each until one is accepted, the last one accepted first. A
 * generator that yields after each entry listed, so that the child's runtime can say that it
 * progresses through a directory of any size (../linux/inspector-child.ts).
 */
export async function* inspectAgentDirectory({
  dir,
  name,
}: {
  /** Where this process opens the directory. */
  dir: string;
  /** Its name in messages. */
  name: string;
}): AsyncGenerator<void, AgentCheck, undefined> {
  let fd: number;
  try {
    fd = openSync(dir, O_PATH | constants.O_DIRECTORY);
  } catch (error) {
    return isErrno(error, "ENOENT") || isErrno(error, "ENOTDIR")
      ? {
          ok: false,
          reason: "missing",
          problem: `the Workload API socket directory ${name} does not exist`,
        }
      : unreadable(name, error);
  }
  let sockets: string[];
  try {
    const stat = fstatSync(fd, { bigint: true });
    // The driver sees a removed directory: whatever the agent does now, it cannot reach it.
    if (stat.nlink === 0n) {
      return {
        ok: false,
        reason: "stale",
        problem: `the Workload API socket directory ${name} was removed on the node after the driver started, and the driver's mount still holds the removed one; the driver restarts so that it sees the node's current one`,
      };
    }
    const key = [name, stat.dev, stat.ino, stat.mtimeNs, stat.ctimeNs].join(":");
    if (listed?.key === key) {
      sockets = listed.sockets;
    } else {
      sockets = yield* listSockets(`/proc/self/fd/${fd}`);
      listed = changedLately(stat) ? undefined : { key, sockets };
    }
  } catch (error) {
    return unreadable(name, error);
  } finally {
    closeSync(fd);
  }
  if (sockets.length === 0) {
    return {
      ok: false,
      reason: "no-socket",
      problem: `the Workload API socket directory ${name} holds no socket`,
    };
  }
  const refusals: string[] = [];
  for (const socket of sockets.slice(0, MAX_TRIED)) {
    const refusal = await connects(join(dir, socket));
    if (refusal === undefined) {
      // Tried first next time.
      if (listed?.sockets === sockets)
        listed.sockets = [socket, ...sockets.filter((s) => s !== socket)];
      return { ok: true, socket: join(name, socket) };
    }
    refusals.push(`${join(name, socket)}: ${refusal}`);
  }
  const untried = sockets.length - MAX_TRIED;
  return {
    ok: false,
    reason: "refused",
    problem: `no socket in ${name} accepts a connection (${refusals.join("; ")}${untried > 0 ? `; ${untried} more not tried` : ""})`,
  };
}

function unreadable(name: string, error: unknown): AgentCheck {
  return {
    ok: false,
    reason: "unreadable",
    problem: `cannot read the Workload API socket directory ${name}: ${(error as Error).message}`,
  };
}

/** The names of the sockets in the directory, at most MAX_SOCKETS, sorted. */
function* listSockets(path: string): Generator<void, string[], undefined> {
  const sockets: string[] = [];
  const dir = opendirSync(path);
  try {
    for (let entry = dir.readSync(); entry !== null; entry = dir.readSync()) {
      yield;
      if (isSocket(entry, path)) sockets.push(entry.name);
      if (sockets.length >= MAX_SOCKETS) break;
    }
  } finally {
    dir.closeSync();
  }
  return sockets.sort();
}

/** From the listing's type; only a file system that gives none (DT_UNKNOWN) costs an lstat. */
function isSocket(entry: Dirent, dir: string): boolean {
  if (entry.isSocket()) return true;
  const known =
    entry.isFile() ||
    entry.isDirectory() ||
    entry.isSymbolicLink() ||
    entry.isFIFO() ||
    entry.isBlockDevice() ||
    entry.isCharacterDevice();
  if (known) return false;
  try {
    return lstatSync(join(dir, entry.name)).isSocket();
  } catch {
    return false;
  }
}

/** Undefined when a connection to the socket succeeds, else why not. */
export async function connects(
  path: string,
  timeoutMs = CONNECT_TIMEOUT_MS,
): Promise<string | undefined> {
  const outcome = await tryConnect(path, timeoutMs);
  switch (outcome.kind) {
    case "connected":
      return undefined;
    case "timeout":
      return `no answer within ${timeoutMs} ms`;
    case "error":
      return outcome.error.message;
  }
}
