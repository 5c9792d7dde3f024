import type { PodPolicy } from "../csi/policy.ts";
import type { Inspector } from "../linux/inspector.ts";
import type { WorkloadUser } from "../ops/workload-user.ts";
import type { InspectorOperations } from "./inspector.ts";

/**
 * What the doctor's checks of a node's set-up share: the shape of a check's line and the options.
 * The checks themselves, each a function yielding its lines, are by subject in
 * doctor-agent-directory.ts, doctor-kubelet.ts, doctor-csi-socket.ts and doctor-programs.ts.
 * What looks into the Workload API directory runs in the inspector's child, as the driver's own
 * checks do: a check that does not answer within --inspect-timeout fails, saying so.
 */

export type DoctorInspector = Inspector<InspectorOperations>;

export interface Check {
  name: string;
  ok: boolean;
  detail: string;
  /** What to change, for a failed check. */
  fix?: string;
  /** Not checked here, for the reason in `detail`; counts as passed. */
  skipped?: true;
}

export interface DoctorOptions {
  workloadApiSocketDir: string;
  csiSocketPath: string;
  /** Query the driver on the CSI socket too. */
  queryDriver: boolean;
  pluginName: string;
  kubeletDir: string;
  registrationDir: string;
  /** The label the driver gives the Workload API directory (--selinux-context). */
  selinuxContext: string;
  /** The driver runs with --recursive-bind: file systems below the directory must be read-only. */
  recursiveBind?: boolean;
  /** The driver registers itself (--kubelet-registration-dir), not node-driver-registrar. */
  builtInRegistration?: boolean;
  /** The driver's --allow rules, when the doctor was given them. */
  policy?: PodPolicy;
  /** Who the workloads run as (--workload-user). */
  workloadUser: WorkloadUser;
  /** The driver follows symbolic links on the Workload API directory's path. */
  allowSymlinkedSocketDir?: boolean;
  /** How long a look into the Workload API directory may go without progress. */
  inspectTimeoutMs: number;
}

// The fix for a check the file system it looks at did not answer.
export const HUNG_FIX =
  "find the file system that does not answer (named above; a FUSE server that stopped answering, say): restart its server, or unmount it (umount -l); processes waiting on it show request_wait_answer in /proc/<pid>/wchan";

export const pass = (name: string, detail: string): Check => ({ name, ok: true, detail });
export const skip = (name: string, why: string): Check => ({
  name,
  ok: true,
  detail: why,
  skipped: true,
});
export const fail = (name: string, detail: string, fix: string): Check => ({
  name,
  ok: false,
  detail,
  fix,
});
