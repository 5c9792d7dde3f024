import {
  accessSync,
  closeSync,
  constants,
  existsSync,
  openSync,
  readFileSync,
  readlinkSync,
  statSync,
} from "node:fs";
import { dirname, join } from "node:path";
import { MANIFEST_ALLOW } from "../csi/identity.ts";
import { PodPolicy } from "../csi/policy.ts";
import { Identity } from "../gen/csi/v1/csi_pb.ts";
import { O_PATH, readMountId } from "../linux/descriptors.ts";
import type { FileStat } from "../linux/file-operations.ts";
import type { Inspector } from "../linux/inspector.ts";
import { InspectionError } from "../linux/inspector.ts";
import { findMount, readMountTable } from "../linux/mountinfo.ts";
import { mountTree } from "../linux/submounts.ts";
import { openTrustedDirectory, UnsafePathError } from "../linux/trusted-path.ts";
import { checkAgent, connects } from "../ops/agent.ts";
import {
  describeOwner,
  describeUser,
  permits,
  SEARCH,
  type WorkloadUser,
  WRITE,
} from "../ops/workload-user.ts";
import { createClient } from "../rpc/client.ts";
import { SOCKET_DIRECTORY_FIX, socketDirectoryProblem } from "../rpc/socket-file.ts";
import { contextParts } from "../selinux/context.ts";
import { detectSelinux } from "../selinux/detection.ts";
import { leftAloneNote, whyUnusable } from "../selinux/labeller.ts";
import type { Survey } from "../selinux/survey.ts";
import type { InspectorOperations } from "./inspector.ts";
import { validatePluginName } from "./settings.ts";

/**
 * The doctor's checks of a node's set-up, each a function yielding its lines. What looks into
 * the Workload API directory runs in the inspector's child, as the driver's own checks do: a
 * check that does not answer within --inspect-timeout fails, saying so.
 */

type DoctorInspector = Inspector<InspectorOperations>;

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
const HUNG_FIX =
  "find the file system that does not answer (named above; a FUSE server that stopped answering, say): restart its server, or unmount it (umount -l); processes waiting on it show request_wait_answer in /proc/<pid>/wchan";

const pass = (name: string, detail: string): Check => ({ name, ok: true, detail });
const skip = (name: string, why: string): Check => ({ name, ok: true, detail: why, skipped: true });
const fail = (name: string, detail: string, fix: string): Check => ({
  name,
  ok: false,
  detail,
  fix,
});

// Linux capability number of CAP_SYS_ADMIN.
const CAP_SYS_ADMIN = 21n;

/**
 * The Workload API directory's path as the driver opens it: no symbolic link on it (unless
 * allowed), and no directory on the way that anyone but root could change. What exists of the
 * path is judged; a missing directory is the agent checks' to report.
 */
export function socketDirPathCheck(socketDir: string, followLinks: boolean): Check {
  const name = "Workload API socket directory's path is safe";
  let found: ReturnType<typeof openTrustedDirectory>;
  try {
    found = openTrustedDirectory(socketDir, { followLinks });
  } catch (error) {
    if (error instanceof UnsafePathError) return fail(name, error.message, error.fix);
    return fail(name, `${socketDir}: ${(error as Error).message}`, "check that /proc is mounted");
  }
  const rule = `${followLinks ? "links followed as allowed" : "no symbolic link on it"}, and every directory above it is root's and writable by root alone`;
  switch (found.kind) {
    case "directory":
      found.handle.close();
      return pass(name, `${socketDir}: ${rule}`);
    case "missing":
    case "not-directory":
      return pass(name, `${socketDir}, as far as it exists (up to ${found.at}): ${rule}`);
    case "removed":
      return fail(
        name,
        `${found.at} was removed on the node, and this mount namespace still holds the removed directory`,
        "restart the driver's container (the driver restarts itself when it sees this), so that it gets the node's current directory",
      );
  }
}

/**
 * Whether this process runs in the driver's container: PID 1 of its PID namespace is this very
 * executable (the doctor is the driver's binary, run by `kubectl exec`).
 */
export function inDriverContainer(): boolean {
  try {
    const init = statSync("/proc/1/exe");
    const self = statSync("/proc/self/exe");
    return init.dev === self.dev && init.ino === self.ino;
  } catch {
    // Not allowed to look at PID 1: not the driver's own container, where the doctor is root.
    return false;
  }
}

/**
 * The kubelet's registration directory. node-driver-registrar registers the driver and alone
 * mounts it, so in the driver's container its absence says nothing: skipped, saying why. With
 * built-in registration the driver needs it itself.
 */
export function registrationDirectoryCheck(
  registrationDir: string,
  builtInRegistration = false,
  driverContainer = inDriverContainer(),
): Check {
  const name = "registration directory exists";
  if (existsSync(registrationDir)) return pass(name, registrationDir);
  if (driverContainer && !builtInRegistration) {
    return skip(
      name,
      `${registrationDir} is not mounted here: this is the driver's container (its PID 1 is the driver), and only node-driver-registrar mounts the registration directory; check it in the registrar's container or its log, or run the doctor on the node`,
    );
  }
  return fail(
    name,
    `${registrationDir} does not exist`,
    "mount the kubelet's plugins_registry directory (hostPath) where node-driver-registrar or --kubelet-registration-dir expects it; on a node, check the kubelet's --root-dir",
  );
}

export function programChecks(): Check[] {
  return ["mount", "umount"].map((program) => {
    const path = Bun.which(program);
    return path
      ? pass(`${program} is on PATH`, path)
      : fail(
          `${program} is on PATH`,
          `not found on ${process.env.PATH ?? ""}`,
          "install util-linux, or add its directory to PATH",
        );
  });
}

export function pluginNameCheck(pluginName: string): Check {
  const problem = validatePluginName(pluginName);
  return problem
    ? fail(
        "plugin name is valid",
        problem,
        "set --plugin-name to the CSIDriver object's name, e.g. csi.spiffe.io",
      )
    : pass("plugin name is valid", pluginName);
}

export async function agentChecks(
  inspector: DoctorInspector,
  socketDir: string,
  workloadUser: WorkloadUser,
): Promise<Check[]> {
  const exists = "Workload API socket directory exists";
  const holds = "Workload API socket directory holds a socket";
  const accepts = "Workload API socket accepts a connection";
  let stat: Awaited<ReturnType<InspectorOperations["stat"]>>;
  try {
    stat = await inspector.run("stat", { path: socketDir }, socketDir);
  } catch (error) {
    if (!(error instanceof InspectionError)) throw error;
    return [fail(exists, error.message, HUNG_FIX)];
  }
  if (stat === null) {
    return [
      fail(
        exists,
        `${socketDir} does not exist`,
        "start the SPIFFE agent, and give --workload-api-socket-dir the directory its socket is in (as the driver sees it: in a container, where the hostPath volume is mounted)",
      ),
    ];
  }
  if (stat.kind !== "directory") {
    return [
      fail(
        exists,
        `${socketDir} is not a directory`,
        "give --workload-api-socket-dir the directory holding the socket, not the socket itself",
      ),
    ];
  }
  const agent = await checkAgent(inspector, socketDir);
  if (agent.ok) {
    return [
      pass(exists, socketDir),
      pass(holds, agent.socket),
      pass(accepts, agent.socket),
      await workloadAccessCheck(inspector, socketDir, agent.socket, workloadUser),
    ];
  }
  if (agent.reason === "stale") {
    return [
      fail(
        exists,
        agent.problem,
        "restart the driver, with the directory's parent mounted into its container",
      ),
    ];
  }
  if (agent.reason === "unknown") {
    return [pass(exists, socketDir), fail(holds, agent.problem, HUNG_FIX)];
  }
  if (agent.reason === "unreadable") {
    return [
      fail(exists, agent.problem, "make the directory readable by the driver (it runs as root)"),
    ];
  }
  if (agent.reason === "no-socket") {
    return [
      pass(exists, socketDir),
      fail(
        holds,
        agent.problem,
        "start the SPIFFE agent, or point its socket_path into this directory",
      ),
    ];
  }
  return [
    pass(exists, socketDir),
    pass(holds, socketDir),
    fail(accepts, agent.problem, "the socket is stale: restart the SPIFFE agent"),
  ];
}

/**
 * Whether the workloads' user may connect to the socket the agent serves: root (the doctor, the
 * driver) always may, a pod's user only as the mode bits say. Connecting takes write permission
 * on the socket, and search permission on its directory, which is what a pod's volume shows.
 */
export async function workloadAccessCheck(
  inspector: DoctorInspector,
  socketDir: string,
  socket: string,
  user: WorkloadUser,
): Promise<Check> {
  const who = describeUser(user);
  const name = `Workload API socket is usable by ${who}`;
  let directory: FileStat | null;
  let file: FileStat | null;
  try {
    directory = await inspector.run("stat", { path: socketDir }, `stat ${socketDir}`);
    file = await inspector.run("lstat", { path: socket }, `lstat ${socket}`);
  } catch (error) {
    if (!(error instanceof InspectionError)) throw error;
    const hung = error.code === "ETIMEDOUT" || error.code === "EAGAIN";
    return fail(name, error.message, hung ? HUNG_FIX : "check that the agent is running");
  }
  if (!directory || !file) {
    return fail(
      name,
      `${directory ? socket : socketDir} is gone`,
      "check that the agent is running",
    );
  }
  const problems: string[] = [];
  if (!permits(user, directory, SEARCH)) {
    problems.push(`${socketDir} (${describeOwner(directory)}) cannot be entered by ${who}`);
  }
  if (!permits(user, file, WRITE)) {
    problems.push(
      `${socket} (${describeOwner(file)}) cannot be connected to by ${who}, which takes write permission on it`,
    );
  }
  if (problems.length === 0) {
    return pass(
      name,
      `${socket}: ${describeOwner(file)}; ${socketDir}: ${describeOwner(directory)}`,
    );
  }
  return fail(
    name,
    `${problems.join("; ")}: root can connect, pods running as ${who} cannot`,
    "make the agent create its socket writable by every user and its directory searchable (SPIRE's agent makes the socket 0777: look for a umask or chmod changing it), or, if the workloads run as the socket's owner or group, say so with --workload-user UID[:GID]",
  );
}

/**
 * The SELinux labels of what the driver labels in the Workload API directory (the one rule of
 * ../selinux/survey.ts: type and level), and what it leaves alone there. Nothing to check when
 * the directory cannot be opened (the agent checks say why).
 */
export async function labelChecks(
  inspector: DoctorInspector,
  socketDir: string,
  context: string,
  recursiveBind: boolean,
): Promise<Check[]> {
  const usable = "Workload API directory is labelled for containers (SELinux)";
  const alone = "Workload API directory holds only what the driver labels (SELinux)";
  let survey: Survey;
  try {
    survey = await inspector.run(
      "surveyLabels",
      { dir: socketDir, name: socketDir, context, write: false, recursiveBind },
      `reading the labels in ${socketDir}`,
    );
  } catch (error) {
    if (!(error instanceof InspectionError)) throw error;
    return [fail(usable, error.message, HUNG_FIX)];
  }
  if (survey.missing) return [];
  const labels = [...survey.seen, ...survey.mountRoots]
    .map((entry) => `${entry.path} ${entry.label ?? "unlabelled"}`)
    .join(", ");
  const note = leftAloneNote(survey);
  const selinux = detectSelinux();
  if (!selinux.enabled) {
    return [
      pass(usable, `not needed, SELinux is off (${selinux.reason}): ${labels}`),
      pass(alone, `not needed, SELinux is off${note ? `: ${note}` : ""}`),
    ];
  }
  const unusable = whyUnusable(survey, context);
  const parts = contextParts(context);
  return [
    unusable === undefined
      ? pass(usable, labels)
      : fail(
          usable,
          `${labels}: containers need type ${parts?.type} at level ${parts?.level}: ${unusable.what}`,
          `run the driver with --selinux-label auto or on and the agent's directory's parent mounted read-write, so that it labels them; or ${[...unusable.fixes, "look for denials in the audit log (ausearch -m avc -ts recent)"].join("; ")}`,
        ),
    note === undefined
      ? pass(alone, `${socketDir}: no hard link, no file of another owner, no FIFO or device`)
      : fail(
          alone,
          survey.leftAlone.map((entry) => `${entry.path}: ${entry.why}`).join("; "),
          "remove them: the driver labels only the directory, its sockets and links, and the files and directories of the directory's owner with one link each; if pods need one of them, label it on the node",
        ),
  ];
}

/**
 * With --recursive-bind: every file system below the Workload API directory is read-only, and
 * the directory's mount receives the node's mounts (slave or shared), so that one mounted later
 * reaches the pods.
 */
export async function submountChecks(socketDir: string): Promise<Check[]> {
  const readOnly = "file systems below the Workload API directory are read-only";
  const receives = "Workload API directory receives later mounts";
  let table: Awaited<ReturnType<typeof readMountTable>>;
  let mountId: number;
  let location: string;
  try {
    // O_PATH: nothing is asked of the directory's file system, which may hang.
    const fd = openSync(socketDir, O_PATH | constants.O_DIRECTORY);
    try {
      mountId = readMountId(fd);
      location = readlinkSync(`/proc/self/fd/${fd}`);
    } finally {
      closeSync(fd);
    }
    table = await readMountTable();
  } catch (error) {
    return [
      fail(readOnly, `${socketDir}: ${(error as Error).message}`, "check that /proc is mounted"),
    ];
  }
  const { writable } = mountTree(table, mountId, location);
  const mount = table.find((each) => each.mountId === mountId);
  const propagation = mount?.propagation ?? [];
  return [
    writable.length === 0
      ? pass(readOnly, `${socketDir}: none below it is read-write`)
      : fail(
          readOnly,
          `read-write: ${writable.join(", ")}; publishing answers FAILED_PRECONDITION with --recursive-bind`,
          "mount them read-only (a pod's readOnly covers only the top of its volume), or start the driver with --allow-writable-submounts to give them to pods writable",
        ),
    propagation.length > 0
      ? pass(receives, `${socketDir} is on ${mount?.mountPoint} (${propagation.join(" ")})`)
      : fail(
          receives,
          `${socketDir} is on ${mount?.mountPoint ?? "an unknown mount"}, which is private: a file system mounted there after a volume was published never reaches its pod`,
          "mount the agent's directory into the driver's container with mountPropagation: HostToContainer",
        ),
  ];
}

export function socketDirectoryCheck(csiSocketPath: string): Check {
  const name = "CSI socket directory is writable";
  let dir = dirname(csiSocketPath);
  // A missing directory is created at start: what counts is its nearest existing ancestor.
  while (!existsSync(dir) && dir !== "/") dir = dirname(dir);
  try {
    accessSync(dir, constants.W_OK);
    return pass(
      name,
      dir === dirname(csiSocketPath) ? dir : `${dir} (${dirname(csiSocketPath)} will be created)`,
    );
  } catch (error) {
    return fail(
      name,
      `${dir}: ${(error as Error).message}`,
      "mount a writable volume (hostPath of the kubelet's plugins/<driver> directory) at the socket's directory",
    );
  }
}

export function socketDirectorySafetyCheck(csiSocketPath: string): Check {
  const name = "CSI socket directory is safe";
  const dir = dirname(csiSocketPath);
  const problem = socketDirectoryProblem(dir);
  return problem
    ? fail(name, problem, SOCKET_DIRECTORY_FIX)
    : pass(name, `${dir}: nobody but the driver's user can replace the socket`);
}

export async function kubeletChecks(kubeletDir: string): Promise<Check[]> {
  const podsDir = join(kubeletDir, "pods");
  if (!existsSync(podsDir)) {
    return [
      fail(
        "kubelet pods directory exists",
        `${podsDir} does not exist`,
        "mount the kubelet's root directory (/var/lib/kubelet, or the distribution's, e.g. /var/snap/microk8s/common/var/lib/kubelet) into the driver, and pass it as --kubelet-dir",
      ),
    ];
  }
  const name = "kubelet pods directory is a shared mount";
  let propagation: string[];
  let where: string;
  try {
    const fd = openSync(podsDir, constants.O_RDONLY | constants.O_DIRECTORY);
    let mountId: number;
    try {
      mountId = readMountId(fd);
    } finally {
      closeSync(fd);
    }
    const mount = await findMount(mountId);
    if (!mount) throw new Error(`mount ${mountId} is not in /proc/self/mountinfo`);
    propagation = mount.propagation;
    where = mount.mountPoint;
  } catch (error) {
    return [
      pass("kubelet pods directory exists", podsDir),
      fail(name, (error as Error).message, "check that /proc is mounted"),
    ];
  }
  const shared = propagation.find((field) => field.startsWith("shared:"));
  return [
    pass("kubelet pods directory exists", podsDir),
    shared
      ? pass(name, `${podsDir} is on ${where} (${propagation.join(" ")})`)
      : fail(
          name,
          `${podsDir} is on ${where}, which is ${propagation.length > 0 ? propagation.join(" ") : "private"}: mounts made here never reach the kubelet`,
          "mount the kubelet directory into the driver's container with mountPropagation: Bidirectional; on the host it must itself be shared (mount --make-rshared /, systemd's default)",
        ),
  ];
}

export function capabilityCheck(): Check {
  const name = "process has CAP_SYS_ADMIN";
  const effective = /^CapEff:\s*([0-9a-f]+)$/m.exec(readFileSync("/proc/self/status", "utf8"))?.[1];
  const has = effective !== undefined && ((BigInt(`0x${effective}`) >> CAP_SYS_ADMIN) & 1n) === 1n;
  return has
    ? pass(name, `CapEff ${effective}`)
    : fail(
        name,
        `CapEff ${effective ?? "unknown"}`,
        "run the driver as root in a privileged container (securityContext.privileged: true)",
      );
}

export async function driverChecks(options: DoctorOptions): Promise<Check[]> {
  const address = `unix://${options.csiSocketPath}`;
  const refusal = await connects(options.csiSocketPath);
  if (refusal !== undefined) {
    return [
      fail(
        "driver answers on the CSI socket",
        `${options.csiSocketPath}: ${refusal}`,
        "start the driver with this --csi-socket-path, and check its log",
      ),
    ];
  }
  const client = createClient(Identity, address);
  const deadline = () => ({ deadline: Date.now() + 5000 });
  const checks: Check[] = [];
  try {
    const info = await client.getPluginInfo({}, deadline());
    checks.push(
      info.name === options.pluginName
        ? pass("driver answers GetPluginInfo", `${info.name} ${info.vendorVersion}`)
        : fail(
            "driver answers GetPluginInfo",
            `it is ${info.name}, not ${options.pluginName}`,
            "make --plugin-name, the CSIDriver object and the registrar's socket path agree",
          ),
    );
    checks.push(driverPolicyCheck(info.manifest[MANIFEST_ALLOW], options.policy));
    const probed = await client.probe({}, deadline());
    checks.push(
      probed.ready === false
        ? fail("driver answers Probe", "not ready", "check the driver's log")
        : pass("driver answers Probe", "ready"),
    );
  } catch (error) {
    const { details, message } = error as { details?: string; message: string };
    checks.push(
      fail("driver answers on the CSI socket", details ?? message, "check the driver's log"),
    );
  } finally {
    client.close();
  }
  return checks;
}

/**
 * The --allow rules in force: the driver's own (its GetPluginInfo manifest), checked against the
 * rules the doctor was given, if any.
 */
export function driverPolicyCheck(reported: string | undefined, given?: PodPolicy): Check {
  const name = "pod policy in force";
  if (reported === undefined) {
    return skip(
      name,
      "the driver does not report its --allow rules (another driver, or an older one)",
    );
  }
  let inForce: PodPolicy;
  try {
    inForce = PodPolicy.parse(reported === "" ? [] : [reported]);
  } catch (error) {
    return fail(name, (error as Error).message, "check the driver's version and its log");
  }
  if (given && !given.sameRules(inForce)) {
    return fail(
      name,
      `the driver admits ${inForce.describe()}, not ${given.describe()} as --allow says here`,
      "restart the driver with the intended --allow rules (the DaemonSet's args, the allow setting of the deployment)",
    );
  }
  return pass(name, `the driver admits ${inForce.describe()}`);
}

/** The --allow rules given to the doctor, when it does not ask the driver for its own. */
export function givenPolicyCheck(given?: PodPolicy): Check {
  const name = "pod policy in force";
  return given
    ? pass(name, `${given.describe()}, as --allow says here (--csi-socket-path asks the driver)`)
    : skip(
        name,
        "unknown here: give --csi-socket-path so that the driver says, or its --allow rules",
      );
}
