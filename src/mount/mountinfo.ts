import { readFileSync } from "node:fs";

/** One line of /proc/<pid>/mountinfo (see proc(5)). */
export interface MountInfo {
  mountId: number;
  parentId: number;
  /** major:minor of the file system's device. */
  device: string;
  /** The directory of the file system that is the root of this mount. */
  root: string;
  mountPoint: string;
  /** Optional fields, e.g. `shared:12` or `master:3`; empty for a private mount. */
  propagation: string[];
  fsType: string;
  source: string;
}

/** Undoes the kernel's octal escapes: `\040` space, `\011` tab, `\012` newline, `\134` backslash. */
function unescapeOctal(field: string): string {
  return field.replace(/\\([0-7]{3})/g, (_, octal: string) =>
    String.fromCharCode(Number.parseInt(octal, 8)),
  );
}

/** Parses mountinfo text; lines that are not well formed are skipped. */
export function parseMountInfo(text: string): MountInfo[] {
  const mounts: MountInfo[] = [];
  for (const line of text.split("\n")) {
    const fields = line.split(" ");
    const separator = fields.indexOf("-", 6);
    if (separator === -1 || fields.length < separator + 3) continue;
    const [mountId, parentId, device, root, mountPoint] = fields;
    if (!mountId || !parentId || !device || root === undefined || mountPoint === undefined) {
      continue;
    }
    mounts.push({
      mountId: Number(mountId),
      parentId: Number(parentId),
      device,
      root: unescapeOctal(root),
      mountPoint: unescapeOctal(mountPoint),
      propagation: fields.slice(6, separator),
      fsType: fields[separator + 1] ?? "",
      source: unescapeOctal(fields[separator + 2] ?? ""),
    });
  }
  return mounts;
}

/**
 * The mount with the given id, from this process's mount table. Reads the whole table, so it
 * is for rare paths only (explaining an error), never for the common path of a call.
 */
export function findMount(mountId: number): MountInfo | undefined {
  return parseMountInfo(readFileSync("/proc/self/mountinfo", "utf8")).find(
    (mount) => mount.mountId === mountId,
  );
}
