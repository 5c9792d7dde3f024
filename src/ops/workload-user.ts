/**
 * Whether the user pods run as may connect to the agent's socket. Root (the doctor, the driver)
 * reaches any socket; a workload is an ordinary user, and connecting to a Unix socket takes
 * write permission on it and search permission on its directory (the pod's volume is that
 * directory). Only the mode bits are read, as the kernel checks them without ACLs.
 */

/** Who the workloads run as: any non-root user (the default), or one uid, with a gid if known. */
export type WorkloadUser = { kind: "any" } | { kind: "id"; uid: number; gid?: number };

export const ANY_USER = "any";

const ID = /^(0|[1-9][0-9]{0,9})$/;
const MAX_ID = 2 ** 32 - 2;

/** The --workload-user setting, or why it is wrong. */
export function parseWorkloadUser(text: string): WorkloadUser | string {
  if (text === ANY_USER) return { kind: "any" };
  const [uid = "", gid, ...rest] = text.split(":");
  const ids = gid === undefined ? [uid] : [uid, gid];
  if (rest.length > 0 || !ids.every((id) => ID.test(id) && Number(id) <= MAX_ID)) {
    return `--workload-user must be "any" or UID[:GID] (numbers, as in a pod's runAsUser and runAsGroup), got ${JSON.stringify(text)}`;
  }
  return gid === undefined
    ? { kind: "id", uid: Number(uid) }
    : { kind: "id", uid: Number(uid), gid: Number(gid) };
}

export function describeUser(user: WorkloadUser): string {
  if (user.kind === "any") return "any non-root user";
  return user.gid === undefined ? `uid ${user.uid}` : `uid ${user.uid} (gid ${user.gid})`;
}

/** What a permission check needs of a file. */
export interface Owned {
  uid: number;
  gid: number;
  mode: number;
}

/** The permission bit for "others"; shifted by 3 for the group, by 6 for the owner. */
export const WRITE = 0o2;
export const SEARCH = 0o1;

/**
 * Whether `user` has `bit` on `file`, as the kernel decides from the mode: the owner's bits for
 * the owner, the group's for the group, the others' for anyone else; root has every bit. For
 * "any non-root user" each class such a user may fall into must have it: the others, the group,
 * and the owner when the owner is not root.
 */
export function permits(user: WorkloadUser, file: Owned, bit: number): boolean {
  const owner = (file.mode >> 6) & bit;
  const group = (file.mode >> 3) & bit;
  const others = file.mode & bit;
  if (user.kind === "any") return others !== 0 && group !== 0 && (file.uid === 0 || owner !== 0);
  if (user.uid === 0) return true;
  if (user.uid === file.uid) return owner !== 0;
  if (user.gid === file.gid) return group !== 0;
  return others !== 0;
}

export function describeOwner(file: Owned): string {
  return `owner uid ${file.uid}, group gid ${file.gid}, mode ${(file.mode & 0o7777).toString(8).padStart(4, "0")}`;
}
