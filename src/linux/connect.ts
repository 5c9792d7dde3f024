import { connect } from "node:net";

export type ConnectOutcome =
  | { kind: "connected" }
  | { kind: "timeout" }
  | { kind: "error"; error: NodeJS.ErrnoException };

/** Tries one connection to a unix socket, bounded in time, and closes it at once. */
export function tryConnect(path: string, timeoutMs: number): Promise<ConnectOutcome> {
  return new Promise((resolve) => {
    const socket = connect({ path });
    const done = (outcome: ConnectOutcome) => {
      clearTimeout(timer);
      socket.destroy();
      resolve(outcome);
    };
    const timer = setTimeout(() => done({ kind: "timeout" }), timeoutMs);
    socket.once("connect", () => done({ kind: "connected" }));
    socket.once("error", (error) => done({ kind: "error", error }));
  });
}
