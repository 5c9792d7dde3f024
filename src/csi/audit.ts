import { status } from "@grpc/grpc-js";
import { type Logger, logged, presentFields } from "../ops/log.ts";
import { LogKey } from "../ops/log-keys.ts";
import { codeName, toStatus } from "../rpc/status.ts";
import { Refusal } from "./errors.ts";
import type { PodIdentity } from "./policy.ts";

/**
 * The audit trail: every publish and unpublish, for which pod, and how it ended. The pod is what
 * the kubelet said (volume_context); an unpublish carries no pod information, so its pod uid is
 * the target path's.
 */

export type AuditOperation = "publish" | "unpublish";

/** granted or refused (by --allow) for a publish, removed for an unpublish, else failed. */
export type AuditOutcome = "granted" | "refused" | "removed" | "failed";

export interface AuditRecord {
  operation: AuditOperation;
  outcome: AuditOutcome;
  code: status;
  volumeId: string;
  pod: PodIdentity;
}

export type AuditSink = (record: AuditRecord) => void;

/** Runs one publish or unpublish, and reports how it ended to `sink`, then ends as it did. */
export async function audited<T>(
  sink: AuditSink | undefined,
  operation: AuditOperation,
  volumeId: string,
  pod: PodIdentity,
  run: () => Promise<T>,
): Promise<T> {
  if (!sink) return run();
  const report = (outcome: AuditOutcome, code: status) =>
    sink({ operation, outcome, code, volumeId, pod });
  let result: T;
  try {
    result = await run();
  } catch (error) {
    report(error instanceof Refusal ? "refused" : "failed", toStatus(error).code);
    throw error;
  }
  report(operation === "publish" ? "granted" : "removed", status.OK);
  return result;
}

/** One info line per record; the fields absent when the kubelet did not say. */
export function auditLogger(logger: Logger): AuditSink {
  return ({ operation, outcome, code, volumeId, pod }) => {
    const fields = presentFields({
      [LogKey.operation]: operation,
      [LogKey.outcome]: outcome,
      [LogKey.code]: codeName(code),
      [LogKey.volumeId]: logged(volumeId),
      [LogKey.podNamespace]: logged(pod.namespace),
      [LogKey.podName]: logged(pod.name),
      [LogKey.podUid]: logged(pod.uid),
      [LogKey.serviceAccount]: logged(pod.serviceAccount),
    });
    logger.info("audit", fields);
  };
}
