// Stands in for the SPIFFE agent: a unix socket server in the Workload API directory that
// answers every message with "pong <message>".
import { rmSync } from "node:fs";
import { join } from "node:path";
import type { UnixSocketListener } from "bun";
import { PATIENCE_MS } from "./wait.ts";

export const AGENT_SOCKET = "agent.sock";

export function startAgent(
  socketDir: string,
  socketName = AGENT_SOCKET,
): UnixSocketListener<undefined> {
  const path = join(socketDir, socketName);
  rmSync(path, { force: true });
  return Bun.listen({
    unix: path,
    socket: {
      data(socket, data) {
        socket.write(`pong ${data.toString()}`);
      },
    },
  });
}

/** Connects to the agent's socket through `dir` (e.g. a pod's volume) and exchanges a message. */
export async function talkToAgent(
  dir: string,
  message = "ping",
  socketName = AGENT_SOCKET,
): Promise<string> {
  const { promise, resolve, reject } = Promise.withResolvers<string>();
  const timer = setTimeout(
    () => reject(new Error(`no answer through ${dir} in ${PATIENCE_MS / 1000} s`)),
    PATIENCE_MS,
  );
  try {
    await Bun.connect({
      unix: join(dir, socketName),
      socket: {
        open(socket) {
          socket.write(message);
        },
        data(socket, data) {
          resolve(data.toString());
          socket.end();
        },
        error(_, error) {
          reject(error);
        },
      },
    });
  } catch (error) {
    clearTimeout(timer);
    throw error;
  }
  return promise.finally(() => clearTimeout(timer));
}
