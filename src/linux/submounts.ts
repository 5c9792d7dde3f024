import type { MountInfo } from "./mountinfo.ts";

/** A mount and the mounts below it, as the mount table shows them: what `--rbind` copies. */
export interface MountTree {
  /**
   * The peer groups (`shared:N`) its mounts belong to in this namespace. A bind of a shared
   * mount joins its peer group, and then anything mounted at the copy propagates back into the
   * original: two trees that share a group are entangled.
   */
  peerGroups: string[];
  /** Mount points of the read-write mounts below the top one. */
  writable: string[];
}

/**
 * The mount tree at the directory `location` on mount `mountId`: that mount, and its
 * descendants whose mount points lie inside the directory. A mount stacked on the directory
 * itself after it was opened is not below it.
 */
export function mountTree(table: MountInfo[], mountId: number, location: string): MountTree {
  const inside = location.endsWith("/") ? location : `${location}/`;
  const children = new Map<number, MountInfo[]>();
  for (const mount of table) {
    const siblings = children.get(mount.parentId);
    if (siblings) siblings.push(mount);
    else children.set(mount.parentId, [mount]);
  }
  const own = table.find((mount) => mount.mountId === mountId);
  const peerGroups = new Set(own ? peerGroupsOf(own) : []);
  const writable: string[] = [];
  const seen = new Set([mountId]);
  const queue = [mountId];
  for (let id = queue.pop(); id !== undefined; id = queue.pop()) {
    for (const child of children.get(id) ?? []) {
      if (seen.has(child.mountId) || !child.mountPoint.startsWith(inside)) continue;
      seen.add(child.mountId);
      queue.push(child.mountId);
      for (const group of peerGroupsOf(child)) peerGroups.add(group);
      if (!child.readOnly) writable.push(child.mountPoint);
    }
  }
  return { peerGroups: [...peerGroups], writable: writable.sort() };
}

/** Whether the two trees share a peer group, so that mounts propagate from one to the other. */
export function entangled(a: MountTree, b: MountTree): boolean {
  return a.peerGroups.some((group) => b.peerGroups.includes(group));
}

function peerGroupsOf(mount: MountInfo): string[] {
  return mount.propagation.filter((field) => field.startsWith("shared:"));
}
