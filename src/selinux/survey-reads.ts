// What a survey reads of the node besides the directory's entries: the mount table and the mounts
// in the directory, the labels of their roots, whether the directory takes writes, and SELinux's
// mode. Every call may block on a file system that does not answer (it runs in the inspector's
// child).

import { accessSync, closeSync, constants, openSync, readFileSync } from "node:fs";
import { O_PATH, readMountId } from "../linux/descriptors.ts";
import { type MountInfo, readMountTable } from "../linux/mountinfo.ts";
import { usableByContainers } from "./context.ts";
import type { Labelled, Survey, SurveyArgs } from "./survey-types.ts";
import { fileLabel } from "./xattr.ts";

/** The label of a mount root, read and never set. */
export function mountRootLabel(
  mountPoint: string,
  args: SurveyArgs,
): Labelled & { usable: boolean; error?: string } {
  let fd: number;
  try {
    fd = openSync(mountPoint, O_PATH | constants.O_NOFOLLOW);
  } catch (error) {
    return { path: mountPoint, label: null, usable: false, error: errorCode(error) };
  }
  try {
    const label = fileLabel(fd);
    return {
      path: mountPoint,
      label: label ?? null,
      usable: usableByContainers(label, args.context),
    };
  } catch (error) {
    return { path: mountPoint, label: null, usable: false, error: errorCode(error) };
  } finally {
    closeSync(fd);
  }
}

export function errorCode(error: unknown): string {
  const { code, message } = error as NodeJS.ErrnoException;
  return code ?? message;
}

/** Whether the file system under `path` takes writes (a read-only mount answers EROFS). */
export function writable(path: string): boolean {
  try {
    accessSync(path, constants.W_OK);
    return true;
  } catch {
    return false;
  }
}

export async function mountTable(): Promise<MountInfo[]> {
  try {
    return await readMountTable();
  } catch {
    // Too large to read: entries are then opened whatever they are, as before.
    return [];
  }
}

/** The mounts below `location` (not the one it is on), sorted by mount point. */
export function mountsIn(table: MountInfo[], location: string): MountInfo[] {
  const inside = location.endsWith("/") ? location : `${location}/`;
  return table
    .filter((mount) => mount.mountPoint.startsWith(inside))
    .sort((a, b) => (a.mountPoint < b.mountPoint ? -1 : 1));
}

/** The mount the open directory is on, for the node's path of it. */
export function holderOf(table: MountInfo[], fd: number): Survey["holder"] {
  let mountId: number;
  try {
    mountId = readMountId(fd);
  } catch {
    return undefined;
  }
  const mount = table.find((each) => each.mountId === mountId);
  return (
    mount && {
      root: mount.root,
      mountPoint: mount.mountPoint,
      fsType: mount.fsType,
      source: mount.source,
    }
  );
}

/** /sys/fs/selinux/enforce, read each time: a node may switch modes while the driver runs. */
export function readEnforce(): Survey["enforce"] {
  try {
    const text = readFileSync("/sys/fs/selinux/enforce", "latin1").trim();
    return text === "1" || text === "0" ? text : null;
  } catch {
    return null;
  }
}
