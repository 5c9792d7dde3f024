import { readFileSync } from "node:fs";
import { open } from "node:fs/promises";

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
  /** Mounted read-only: the mount's own `ro` flag, or its file system's. */
  readOnly: boolean;
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
    const [mountId, parentId, device, root, mountPoint, options] = fields;
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
      readOnly: hasReadOnly(options) || hasReadOnly(fields[separator + 3]),
    });
  }
  return mounts;
}

function hasReadOnly(options: string | undefined): boolean {
  return options?.split(",").includes("ro") ?? false;
}

/** Past this, the mount table is not read: a node with that many mounts has another problem. */
export const MAX_MOUNT_TABLE_BYTES = 16 * 1024 * 1024;
// procfs hands out mountinfo a page or so per read.
const READ_CHUNK_BYTES = 256 * 1024;

/** The mount table is larger than a call may read. */
export class MountTableTooLarge extends Error {
  override name = "MountTableTooLarge";
}

/**
 * This process's mount table, read off the event loop and bounded: a table beyond `maxBytes`
 * throws MountTableTooLarge instead of holding the call and the memory.
 */
export async function readMountTable(maxBytes = MAX_MOUNT_TABLE_BYTES): Promise<MountInfo[]> {
  const file = await open("/proc/self/mountinfo", "r");
  const chunks: Buffer[] = [];
  let total = 0;
  try {
    for (;;) {
      const chunk = Buffer.allocUnsafe(READ_CHUNK_BYTES);
      const { bytesRead } = await file.read(chunk, 0, chunk.length, null);
      if (bytesRead === 0) break;
      total += bytesRead;
      if (total > maxBytes) {
        throw new MountTableTooLarge(
          `/proc/self/mountinfo is larger than ${maxBytes} bytes (the node has too many mounts to check)`,
        );
      }
      chunks.push(chunk.subarray(0, bytesRead));
    }
  } finally {
    await file.close();
  }
  return parseMountInfo(Buffer.concat(chunks, total).toString("utf8"));
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
