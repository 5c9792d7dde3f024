import { lstatSync, readdirSync } from "node:fs";
import { join } from "node:path";
import { tryConnect } from "../linux/connect.ts";
import { isErrno } from "../linux/errno.ts";

// How long a connection to the agent's socket may take before it counts as not answering.
const CONNECT_TIMEOUT_MS = 1000;

export type AgentCheck =
  | { ok: true; socket: string }
  | { ok: false; reason: "missing" | "unreadable" | "no-socket" | "refused"; problem: string };

/**
 * Whether the SPIFFE agent is there: the Workload API directory exists and holds a socket that
 * accepts a connection. Asynchronous and bounded in time; nothing here is on a CSI call's path.
 */
export async function checkAgent(socketDir: string): Promise<AgentCheck> {
  let entries: string[];
  try {
    entries = readdirSync(socketDir);
  } catch (error) {
    return isErrno(error, "ENOENT")
      ? {
          ok: false,
          reason: "missing",
          problem: `the Workload API socket directory ${socketDir} does not exist`,
        }
      : {
          ok: false,
          reason: "unreadable",
          problem: `cannot read the Workload API socket directory ${socketDir}: ${(error as Error).message}`,
        };
  }
  const sockets = entries
    .map((name) => join(socketDir, name))
    .filter((path) => {
      try {
        return lstatSync(path).isSocket();
      } catch {
        return false;
      }
    });
  if (sockets.length === 0) {
    return {
      ok: false,
      reason: "no-socket",
      problem: `the Workload API socket directory ${socketDir} holds no socket`,
    };
  }
  const refusals: string[] = [];
  for (const socket of sockets) {
    const refusal = await connects(socket);
    if (refusal === undefined) return { ok: true, socket };
    refusals.push(`${socket}: ${refusal}`);
  }
  return {
    ok: false,
    reason: "refused",
    problem: `no socket in ${socketDir} accepts a connection (${refusals.join("; ")})`,
  };
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
