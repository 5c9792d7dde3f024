// The doctor's checks of the Workload API directory: its path, the agent's socket in it, whether
// the workloads may use it, its label and the file systems below it.

import { closeSync, constants, openSync, readlinkSync } from "node:fs";
import { O_PATH, readMountId } from "../linux/descriptors.ts";
import type { FileStat } from "../linux/file-operations.ts";
import { InspectionError } from "../linux/inspector.ts";
import { readMountTable } from "../linux/mountinfo.ts";
import { mountTree } from "../linux/submounts.ts";
import { openTrustedDirectory, UnsafePathError } from "../linux/trusted-path.ts";
import { checkAgent } from "../ops/agent.ts";
import {
  describeOwner,
  describeUser,
  permits,
  SEARCH,
  type WorkloadUser,
  WRITE,
} from "../ops/workload-user.ts";
import { contextParts } from "../selinux/context.ts";
import { detectSelinux } from "../selinux/detection.ts";
import { leftAloneNote, whyUnusable } from "../selinux/labeller.ts";
import type { Survey } from "../selinux/survey.ts";
import { type Check, type DoctorInspector, fail, HUNG_FIX, pass } from "./doctor-checks.ts";
import type { InspectorOperations } from "./inspector.ts";

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
