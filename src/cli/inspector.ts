import { fileURLToPath } from "node:url";
import type { FileOperations } from "../linux/file-operations.ts";
import { Inspector, type InspectorOptions } from "../linux/inspector.ts";
import type { inspectAgentDirectory } from "../ops/agent.ts";
import type { surveyLabels } from "../selinux/survey.ts";

/**
 * What the inspector's child may be asked to do (../linux/inspector.ts): every look into the
 * Workload API directory, off the driver's event loop and bounded in time.
 */
export type InspectorOperations = FileOperations & {
  agentDirectory: typeof inspectAgentDirectory;
  surveyLabels: typeof surveyLabels;
};

/**
 * The command that starts this program as an inspector child: the compiled executable with
 * `inspector` (see ../main.ts), or from source, bun with the entry point.
 */
function inspectorCommand(): string[] {
  // A compiled executable's modules live under /$bunfs/.
  return import.meta.path.startsWith("/$bunfs/")
    ? [process.execPath, "inspector"]
    : [process.execPath, fileURLToPath(new URL("../main.ts", import.meta.url)), "inspector"];
}

/** The parent's side: an inspector that gives up on a check silent for `timeoutMs`. */
export function startInspector(
  timeoutMs: number,
  onTimeout?: InspectorOptions["onTimeout"],
  onLeftBehind?: InspectorOptions["onLeftBehind"],
): Inspector<InspectorOperations> {
  return new Inspector<InspectorOperations>({
    timeoutMs,
    command: inspectorCommand(),
    onTimeout,
    onLeftBehind,
  });
}

/**
 * The child's side: `spiffe-csi-driver inspector`, started by the driver and the doctor. Loads
 * only the operations and the child's runtime: nothing of gRPC, protobuf, the CLI or metrics.
 */
export async function serveInspector(): Promise<void> {
  const [{ serveInspections }, { fileOperations }, { inspectAgentDirectory }, { surveyLabels }] =
    await Promise.all([
      import("../linux/inspector-child.ts"),
      import("../linux/file-operations.ts"),
      import("../ops/agent.ts"),
      import("../selinux/survey.ts"),
    ]);
  const operations: InspectorOperations = {
    ...fileOperations,
    agentDirectory: inspectAgentDirectory,
    surveyLabels,
  };
  await serveInspections(operations);
}
