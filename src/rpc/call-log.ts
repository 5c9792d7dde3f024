import { status } from "@grpc/grpc-js";
import { LOG_LEVELS, type Logger, logged, presentFields } from "../ops/log.ts";
import { LogKey } from "../ops/log-keys.ts";
import type { CallObserver } from "./adapter.ts";
import { codeName } from "./status.ts";

/** One log line per call: debug when it succeeded, error when it failed. Never logs secrets. */
export function rpcLogger(logger: Logger): CallObserver {
  return (call) => {
    // A success is a debug line: nothing to build when debug lines are off.
    if (call.code === status.OK && logger.level < LOG_LEVELS.debug) return;
    const request = (call.request ?? {}) as Record<string, unknown>;
    const fields = presentFields({
      [LogKey.method]: call.method.name,
      [LogKey.volumeId]: logged(request.volumeId),
      [LogKey.targetPath]: logged(request.targetPath),
      [LogKey.volumePath]: logged(request.volumePath),
      [LogKey.code]: codeName(call.code),
      [LogKey.durationMs]: Math.round(call.durationMs * 100) / 100,
    });
    if (call.code === status.OK) {
      logger.debug("rpc", fields);
    } else if (call.unexpected !== undefined) {
      logger.error("rpc", fields, call.unexpected);
    } else {
      logger.error("rpc", { ...fields, [LogKey.details]: call.details });
    }
  };
}
