import { status } from "@grpc/grpc-js";
import { UntrustedMountError } from "../linux/gate.ts";
import { MountCommandError } from "../linux/mounter.ts";
import { MountTableTooLarge } from "../linux/mountinfo.ts";
import { RpcError } from "../rpc/status.ts";

/**
 * The errors the CSI services answer with, built in one place. Each message names the field or
 * the path it is about; an OS failure keeps its cause for the log.
 */

/** Quotes a value for an error message, cut short so a hostile megabyte string stays out. */
export function quote(value: string): string {
  return JSON.stringify(value.length > 256 ? `${value.slice(0, 256)}...` : value);
}

export function invalid(message: string): RpcError {
  return new RpcError(status.INVALID_ARGUMENT, message);
}

export function failedPrecondition(message: string): RpcError {
  return new RpcError(status.FAILED_PRECONDITION, message);
}

/** A publish the pod policy refuses (--allow): the audit says "refused", not "failed". */
export class Refusal extends RpcError {
  override name = "Refusal";
}

export function refused(
  code: status.PERMISSION_DENIED | status.FAILED_PRECONDITION,
  message: string,
): Refusal {
  return new Refusal(code, message);
}

/** The call may succeed later, unchanged: the kubelet retries it. */
export function unavailable(message: string): RpcError {
  return new RpcError(status.UNAVAILABLE, message);
}

export function internal(message: string, cause?: unknown): RpcError {
  return new RpcError(status.INTERNAL, message, { cause });
}

/** NOT_FOUND for NodeGetVolumeStats: nothing of this driver's is published at the path. */
export function notFound(volumePath: string, why: string): RpcError {
  return new RpcError(
    status.NOT_FOUND,
    `no volume is published at volume_path ${quote(volumePath)}: ${why}`,
  );
}

/** Runs a file-system call; a failure answers as fsProblem says. */
export function fs<T>(what: string, call: () => T): T {
  try {
    return call();
  } catch (error) {
    if (error instanceof RpcError) throw error;
    throw fsProblem(what, error);
  }
}

/**
 * What a file-system call's failure answers: a mount the driver does not look into
 * (../linux/gate.ts) is UNAVAILABLE with the fix, for it may be unmounted; a mount table too
 * large to judge from is FAILED_PRECONDITION; anything else INTERNAL, saying what was done.
 */
export function fsProblem(what: string, error: unknown): RpcError {
  if (error instanceof UntrustedMountError) {
    return unavailable(`${what}: ${error.message}; ${error.fix}`);
  }
  if (error instanceof MountTableTooLarge) return failedPrecondition(`${what}: ${error.message}`);
  return internal(`${what}: ${(error as Error).message}`, error);
}

/**
 * A failed `mount`/`umount`: DEADLINE_EXCEEDED (which the kubelet retries) when it hung. With
 * `sourceMayGo` (the bind of the Workload API directory), UNAVAILABLE when what it was given was
 * removed meanwhile: the agent's directory removed while a publish was under way, which the
 * next try finds again, or says is missing.
 */
export function commandFailed(what: string, error: unknown, sourceMayGo = false): RpcError {
  if (error instanceof MountCommandError) {
    const gone = sourceMayGo && !error.timedOut && /No such file or directory/.test(error.stderr);
    return new RpcError(
      error.timedOut ? status.DEADLINE_EXCEEDED : gone ? status.UNAVAILABLE : status.INTERNAL,
      `${what}: ${error.message}`,
      { cause: error },
    );
  }
  return internal(`${what}: ${(error as Error).message}`, error);
}
