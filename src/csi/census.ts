import { closeSync, constants } from "node:fs";
import { dirname } from "node:path";
import { type DirectoryHandle, O_PATH } from "../linux/descriptors.ts";
import { isErrno } from "../linux/errno.ts";
import { type MountInfo, readMountTable } from "../linux/mountinfo.ts";
import { openAt } from "../linux/openat.ts";
import { openTrustedDirectory } from "../linux/trusted-path.ts";
import { TARGET_NAME } from "./kubelet.ts";
import { type BindOrigin, bindOrigin, type SourceOptions } from "./source.ts";
import { ABNORMAL_REASONS, type AbnormalReason } from "./stats.ts";

export interface VolumeCounts {
  /** Targets that show the Workload API directory now. */
  published: number;
  /** The other published volumes, by reason. */
  abnormal: Record<AbnormalReason, number>;
}

interface Held {
  handle: DirectoryHandle;
  /** Censuses looking at it now: it is closed once it is dropped and none is. */
  users: number;
  dropped: boolean;
}

/** The Workload API directory as a census sees it. */
type Source =
  | { kind: "directory"; origin: BindOrigin | undefined }
  | { kind: "missing" | "removed" | "refused" };

/**
 * The published volumes, each by its volume directory held open (a descriptor each), and their
 * census: what each target shows now, as the stats code judges a volume, told from the mount
 * table alone. No target is opened for a look inside, stat'ed or listed: a target with a file
 * system mounted over it that hangs (or any mount that is not a bind of the Workload API
 * directory) counts as such without a request to it, and no census holds a thread that the
 * calls' file reads need.
 */
export class PublishedVolumes {
  private readonly held = new Map<string, Held>();

  /** `source`: the Workload API directory, as the driver was told it. */
  constructor(private readonly source: SourceOptions) {}

  has(key: string): boolean {
    return this.held.has(key);
  }

  /** Holds `handle` as the volume `key`'s directory; closes it if that volume is held already. */
  add(key: string, handle: DirectoryHandle): void {
    if (this.held.has(key)) handle.close();
    else this.held.set(key, { handle, users: 0, dropped: false });
  }

  delete(key: string): void {
    const held = this.held.get(key);
    if (!held) return;
    this.held.delete(key);
    held.dropped = true;
    release(held, 0);
  }

  /** What every published volume's target shows now. */
  async count(): Promise<VolumeCounts> {
    const counts: VolumeCounts = {
      published: 0,
      abnormal: Object.fromEntries(ABNORMAL_REASONS.map((reason) => [reason, 0])) as Record<
        AbnormalReason,
        number
      >,
    };
    const volumes: { held: Held; target: string | undefined }[] = [];
    for (const held of this.held.values()) {
      held.users++;
      volumes.push({ held, target: targetPoint(held.handle) });
    }
    try {
      const sourceHandle = this.openSource();
      let source: Source = sourceHandle.kind === "directory" ? { kind: "refused" } : sourceHandle;
      let table: MountInfo[] = [];
      try {
        table = await readMountTable({
          mountIds: sourceHandle.kind === "directory" ? [sourceHandle.handle.mountId] : [],
          // Mounts inside the volume directories: the targets, and what is below them.
          directories: volumes.flatMap(({ target }) => (target ? [dirname(target)] : [])),
        });
        if (sourceHandle.kind === "directory") {
          source = { kind: "directory", origin: bindOrigin(sourceHandle.handle, table) };
        }
      } finally {
        if (sourceHandle.kind === "directory") sourceHandle.handle.close();
      }
      const tops = topMounts(table);
      for (const { held, target } of volumes) {
        const reason = target === undefined ? "target_gone" : judge(held, tops.get(target), source);
        if (reason) counts.abnormal[reason]++;
        else counts.published++;
      }
    } catch {
      // The mount table could not be read: nothing can be told of any volume.
      for (const _ of volumes) counts.abnormal.unreadable++;
    } finally {
      for (const { held } of volumes) release(held, 1);
    }
    return counts;
  }

  /** The Workload API directory, opened the trusted way (never waits on a file system there). */
  private openSource():
    | { kind: "directory"; handle: DirectoryHandle }
    | { kind: "missing" | "removed" | "refused" } {
    try {
      const found = openTrustedDirectory(this.source.workloadApiSocketDir, {
        followLinks: this.source.allowSymlinkedSocketDir === true,
      });
      if (found.kind === "directory") return { kind: "directory", handle: found.handle };
      return { kind: found.kind === "removed" ? "removed" : "missing" };
    } catch {
      return { kind: "refused" };
    }
  }
}

/** Where the target of the volume directory `volume` is, as the mount table names it. */
function targetPoint(volume: DirectoryHandle): string | undefined {
  try {
    const location = volume.location();
    return location.endsWith(" (deleted)") ? undefined : `${location}/${TARGET_NAME}`;
  } catch {
    return undefined;
  }
}

/** The topmost mount at each mount point of `table`: the one no other there is stacked on. */
function topMounts(table: MountInfo[]): Map<string, MountInfo> {
  const tops = new Map<string, MountInfo>();
  for (const mount of table) {
    const below = tops.get(mount.mountPoint);
    if (!below || mount.parentId === below.mountId) tops.set(mount.mountPoint, mount);
  }
  return tops;
}

/** What is wrong with a volume whose target's topmost mount is `top`; undefined when nothing. */
function judge(held: Held, top: MountInfo | undefined, source: Source): AbnormalReason | undefined {
  if (!top) return targetThere(held.handle) ? "not_mounted" : "target_gone";
  switch (source.kind) {
    case "missing":
      return "source_missing";
    case "removed":
      return "source_stale";
    case "refused":
      return "unreadable";
  }
  const origin = source.origin;
  if (!origin || top.device !== origin.device || top.root !== origin.root) return "replaced";
  return undefined;
}

/**
 * Whether the volume directory holds a directory named as the target, told by an O_PATH open
 * in it (the volume directory is the kubelet's, and the target is no mount: nothing else is
 * asked).
 */
function targetThere(volume: DirectoryHandle): boolean {
  try {
    closeSync(
      openAt(volume.fd, TARGET_NAME, O_PATH | constants.O_DIRECTORY | constants.O_NOFOLLOW),
    );
    return true;
  } catch (error) {
    if (isErrno(error, "ENOENT") || isErrno(error, "ELOOP") || isErrno(error, "ENOTDIR")) {
      return false;
    }
    return true;
  }
}

function release(held: Held, uses: number): void {
  held.users -= uses;
  if (held.dropped && held.users === 0) held.handle.close();
}
