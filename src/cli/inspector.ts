import { fileOperations } from "../linux/file-operations.ts";
import { Inspector, serveInspections } from "../linux/inspector.ts";
import { inspectAgentDirectory } from "../ops/agent.ts";
import { surveyLabels } from "../selinux/survey.ts";

/**
 * What the inspector's child may be asked to do (../linux/inspector.ts): every look into the
 * Workload API directory, off the driver's event loop and bounded in time.
 */
export const operations = {
  ...fileOperations,
  agentDirectory: inspectAgentDirectory,
  surveyLabels,
};

export type InspectorOperations = typeof operations;

/** The parent's side: an inspector that gives up on a check silent for `timeoutMs`. */
export function startInspector(
  timeoutMs: number,
  onTimeout?: ConstructorParameters<typeof Inspector>[0]["onTimeout"],
): Inspector<InspectorOperations> {
  return new Inspector<InspectorOperations>({ timeoutMs, onTimeout });
}

/** The child's side: `spiffe-csi-driver inspector`, started by the driver and the doctor. */
export function serveInspector(): Promise<void> {
  return serveInspections(operations);
}
