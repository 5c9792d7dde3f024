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
    const mount = parseLine(line);
    if (mount) mounts.push(mount);
  }
  return mounts;
}

/** One line of mountinfo, or undefined when it is not well formed. */
function parseLine(line: string): MountInfo | undefined {
  const fields = line.split(" ");
  const separator = fields.indexOf("-", 6);
  if (separator === -1 || fields.length < separator + 3) return undefined;
  const [mountId, parentId, device, root, mountPoint, options] = fields;
  if (!mountId || !parentId || !device || root === undefined || mountPoint === undefined) {
    return undefined;
  }
  return {
    mountId: Number(mountId),
    parentId: Number(parentId),
    device,
    root: unescapeOctal(root),
    mountPoint: unescapeOctal(mountPoint),
    propagation: fields.slice(6, separator),
    fsType: fields[separator + 1] ?? "",
    source: unescapeOctal(fields[separator + 2] ?? ""),
    readOnly: hasReadOnly(options) || hasReadOnly(fields[separator + 3]),
  };
}

function hasReadOnly(options: string | undefined): boolean {
  return options?.split(",").includes("ro") ?? false;
}

/** Past this, the mount table is not read: a node with that many mounts has another problem. */
const MAX_MOUNT_TABLE_BYTES = 16 * 1024 * 1024;
// procfs hands out mountinfo a page or so per read.
const READ_CHUNK_BYTES = 256 * 1024;

/** The mount table is larger than a call may read. */
export class MountTableTooLarge extends Error {
  override name = "MountTableTooLarge";
}

/**
 * What a call needs from the mount table: the mounts with these ids, and every mount whose
 * mount point lies inside one of these directories (as the kernel names them).
 */
export interface MountQuery {
  mountIds: number[];
  directories: string[];
}

interface Waiter {
  query: MountQuery | undefined;
  resolve(mounts: MountInfo[]): void;
  reject(error: unknown): void;
}

/**
 * Reads of this process's mount table, off the event loop and bounded: a table beyond
 * `maxBytes` throws MountTableTooLarge instead of holding the call and the memory.
 *
 * Calls that ask while a read is running share the next one: each call gets a read that began
 * after it asked, so it sees every mount made before it asked, and at most one read runs at a
 * time however many calls wait. A read keeps only the entries the waiting calls asked for,
 * parsing the table a chunk at a time: memory does not grow with the node's mount count or with
 * the number of calls.
 */
export class MountTableReader {
  private running = false;
  private waiting: Waiter[] = [];

  constructor(
    private readonly maxBytes = MAX_MOUNT_TABLE_BYTES,
    /** The table to read: this process's, or a stand-in in tests. */
    private readonly path = "/proc/self/mountinfo",
  ) {}

  /** The entries `query` asks for; without one, the whole table. */
  read(query?: MountQuery): Promise<MountInfo[]> {
    return new Promise((resolve, reject) => {
      this.waiting.push({ query, resolve, reject });
      if (!this.running) void this.readForWaiting();
    });
  }

  private async readForWaiting(): Promise<void> {
    this.running = true;
    while (this.waiting.length > 0) {
      const batch = this.waiting;
      this.waiting = [];
      try {
        const mounts = await this.readTable(batch.map((waiter) => waiter.query));
        for (const { query, resolve } of batch) {
          if (!query) {
            resolve(mounts);
            continue;
          }
          const asked = matcher([query]);
          resolve(mounts.filter((mount) => asked(mount.mountId, mount.mountPoint)));
        }
      } catch (error) {
        for (const waiter of batch) waiter.reject(error);
      }
    }
    this.running = false;
  }

  private async readTable(queries: (MountQuery | undefined)[]): Promise<MountInfo[]> {
    const wanted = queries.includes(undefined) ? () => true : matcher(queries as MountQuery[]);
    const mounts: MountInfo[] = [];
    const file = await open(this.path, "r");
    // Reused for every chunk; a line cut at the chunk's end is carried over, and a character
    // cut there is completed by the decoder.
    const chunk = Buffer.allocUnsafe(READ_CHUNK_BYTES);
    const decoder = new TextDecoder();
    let carried = "";
    let total = 0;
    try {
      for (;;) {
        const { bytesRead } = await file.read(chunk, 0, chunk.length, null);
        if (bytesRead === 0) break;
        total += bytesRead;
        if (total > this.maxBytes) {
          throw new MountTableTooLarge(
            `${this.path} is larger than ${this.maxBytes} bytes (the node has too many mounts to check)`,
          );
        }
        const lines = (
          carried + decoder.decode(chunk.subarray(0, bytesRead), { stream: true })
        ).split("\n");
        carried = lines.pop() ?? "";
        for (const line of lines) keepIfWanted(line, wanted, mounts);
      }
      keepIfWanted(carried + decoder.decode(), wanted, mounts);
    } finally {
      await file.close();
    }
    return mounts;
  }
}

/** Whether a mount (its id and unescaped mount point) is asked for by one of the queries. */
function matcher(queries: MountQuery[]): (mountId: number, mountPoint: string) => boolean {
  const ids = new Set(queries.flatMap((query) => query.mountIds));
  const inside = queries.flatMap((query) =>
    query.directories.map((directory) => (directory.endsWith("/") ? directory : `${directory}/`)),
  );
  return (mountId, mountPoint) =>
    ids.has(mountId) || inside.some((directory) => mountPoint.startsWith(directory));
}

/** Parses `line` in full only when its id and mount point are wanted. */
function keepIfWanted(
  line: string,
  wanted: (mountId: number, mountPoint: string) => boolean,
  mounts: MountInfo[],
): void {
  // The id and the mount point are the first and fifth fields.
  const idEnd = line.indexOf(" ");
  let start = idEnd;
  for (let field = 1; field < 4 && start !== -1; field++) start = line.indexOf(" ", start + 1);
  if (idEnd === -1 || start === -1) return;
  const end = line.indexOf(" ", start + 1);
  const raw = line.slice(start + 1, end === -1 ? undefined : end);
  const mountPoint = raw.includes("\\") ? unescapeOctal(raw) : raw;
  if (!wanted(Number(line.slice(0, idEnd)), mountPoint)) return;
  const mount = parseLine(line);
  if (mount) mounts.push(mount);
}

const sharedReader = new MountTableReader();

/**
 * Entries of this process's mount table (all of them without a query), from a read shared with
 * the calls that wait at the same time (see MountTableReader).
 */
export function readMountTable(query?: MountQuery): Promise<MountInfo[]> {
  return sharedReader.read(query);
}

/**
 * The mount with the given id, from this process's mount table. Reads the whole table, so it
 * is for rare paths only (explaining an error), never for the common path of a call.
 */
export async function findMount(mountId: number): Promise<MountInfo | undefined> {
  return (await readMountTable()).find((mount) => mount.mountId === mountId);
}
