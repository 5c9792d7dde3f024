import { status } from "@grpc/grpc-js";
import type { Logger } from "../ops/log.ts";
import { LogKey } from "../ops/log-keys.ts";
import type { CallObserver } from "./adapter.ts";
import { codeName } from "./status.ts";

// Strings from a request are cut to this length in logs.
const MAX_LOGGED_CHARS = 256;

function logged(value: unknown): string | undefined {
  if (typeof value !== "string" || value === "") return undefined;
  return value.length > MAX_LOGGED_CHARS ? `${value.slice(0, MAX_LOGGED_CHARS)}...` : value;
}

/** One log line per call: debug when it succeeded, error when it failed. Never logs secrets. */
export function rpcLogger(logger: Logger): CallObserver {
  return (call) => {
    const request = (call.request ?? {}) as Record<string, unknown>;
    const fields: Record<string, unknown> = {
      [LogKey.method]: call.method.name,
      [LogKey.volumeId]: logged(request.volumeId),
      [LogKey.targetPath]: logged(request.targetPath),
      [LogKey.volumePath]: logged(request.volumePath),
      [LogKey.code]: codeName(call.code),
      [LogKey.durationMs]: Math.round(call.durationMs * 100) / 100,
    };
    for (const key of Object.keys(fields)) {
      if (fields[key] === undefined) delete fields[key];
    }
    if (call.code === status.OK) {
      logger.debug("rpc", fields);
    } else if (call.unexpected !== undefined) {
      logger.error("rpc", fields, call.unexpected);
    } else {
      logger.error("rpc", { ...fields, [LogKey.details]: call.details });
    }
  };
}
