import type { AgentCheck } from "./agent.ts";

/** The problems /readyz reports, by kind: the label values of spiffe_csi_readiness_problems. */
export const READINESS_KINDS = [
  // The Workload API directory cannot be labelled for SELinux (the readiness hook).
  "selinux_labels",
  // The driver sees a removed Workload API directory: restart it.
  "stale_directory",
  // The agent's: no directory, an unreadable one, no socket in it, no socket that accepts.
  "agent_directory_missing",
  "agent_directory_unreadable",
  "agent_no_socket",
  "agent_refused",
  // The look into the agent's directory did not answer in time (a file system that hangs).
  "agent_directory_unresponsive",
] as const;
export type ReadinessKind = (typeof READINESS_KINDS)[number];

const AGENT_KINDS: Record<Extract<AgentCheck, { ok: false }>["reason"], ReadinessKind> = {
  stale: "stale_directory",
  missing: "agent_directory_missing",
  unreadable: "agent_directory_unreadable",
  "no-socket": "agent_no_socket",
  refused: "agent_refused",
  unknown: "agent_directory_unresponsive",
};

/** Every problem /readyz sees now (it answers with the first), by kind. */
export async function readinessKinds(
  agent: () => Promise<AgentCheck>,
  labelProblem: (() => Promise<string | undefined>) | undefined,
): Promise<ReadinessKind[]> {
  const kinds: ReadinessKind[] = [];
  if ((await labelProblem?.()) !== undefined) kinds.push("selinux_labels");
  const check = await agent();
  if (!check.ok) kinds.push(AGENT_KINDS[check.reason]);
  return kinds;
}
