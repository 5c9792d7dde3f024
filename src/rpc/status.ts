import { status } from "@grpc/grpc-js";

/** An error a handler throws on purpose: its code and message go to the caller as they are. */
export class RpcError extends Error {
  constructor(
    readonly code: status,
    message: string,
    options?: ErrorOptions,
  ) {
    super(message, options);
    this.name = "RpcError";
  }
}

export interface CallStatus {
  code: status;
  details: string;
  /** Set when the error was not an RpcError: a bug, whose stack belongs in the log. */
  unexpected?: unknown;
}

/** The one place where anything a handler throws becomes a gRPC status. */
export function toStatus(error: unknown): CallStatus {
  if (error instanceof RpcError) {
    return { code: error.code, details: error.message };
  }
  // Never send an unexpected exception's text to the caller: it may hold paths or internals
  // that mean nothing there. The log gets the whole error.
  return {
    code: status.INTERNAL,
    details: "internal error (see the driver log)",
    unexpected: error,
  };
}

export function codeName(code: status): string {
  return status[code] ?? String(code);
}
