import { type BigIntStats, lstatSync, opendirSync, statfsSync, statSync } from "node:fs";
import { isErrno } from "./errno.ts";

/**
 * Plain file-system calls for the inspector's child (./inspector.ts), for any code that has to
 * look at a path it does not trust to answer: each result is JSON (big numbers as strings).
 */

export interface FileStat {
  kind: "directory" | "file" | "symlink" | "socket" | "other";
  dev: string;
  ino: string;
  mode: number;
  uid: number;
  gid: number;
  nlink: number;
  mtimeNs: string;
  ctimeNs: string;
}

function fileStat(stat: BigIntStats): FileStat {
  const kind = stat.isDirectory()
    ? "directory"
    : stat.isFile()
      ? "file"
      : stat.isSymbolicLink()
        ? "symlink"
        : stat.isSocket()
          ? "socket"
          : "other";
  return {
    kind,
    dev: String(stat.dev),
    ino: String(stat.ino),
    mode: Number(stat.mode),
    uid: Number(stat.uid),
    gid: Number(stat.gid),
    nlink: Number(stat.nlink),
    mtimeNs: String(stat.mtimeNs),
    ctimeNs: String(stat.ctimeNs),
  };
}

// A file changed this recently may change again within the same timestamp tick, unseen: what was
// read of it is not kept (as git does with "racily clean" files).
const RACY_NS = 2_000_000_000n;

/** Whether the file changed (its contents or its inode) too lately for its times to be trusted. */
export function changedLately(stat: BigIntStats): boolean {
  const now = BigInt(Date.now()) * 1_000_000n;
  return now - stat.mtimeNs < RACY_NS || now - stat.ctimeNs < RACY_NS;
}

export interface FileSystemUsage {
  bsize: string;
  blocks: string;
  bfree: string;
  bavail: string;
  files: string;
  ffree: string;
}

export const fileOperations = {
  /** stat(2), following links; null when nothing is there (ENOENT, ENOTDIR). */
  stat: ({ path }: { path: string }): FileStat | null => {
    try {
      return fileStat(statSync(path, { bigint: true }));
    } catch (error) {
      if (isErrno(error, "ENOENT") || isErrno(error, "ENOTDIR")) return null;
      throw error;
    }
  },
  /** lstat(2): a link is described, never followed; null when nothing is there. */
  lstat: ({ path }: { path: string }): FileStat | null => {
    try {
      return fileStat(lstatSync(path, { bigint: true }));
    } catch (error) {
      if (isErrno(error, "ENOENT") || isErrno(error, "ENOTDIR")) return null;
      throw error;
    }
  },
  /** statfs(2) of the file system under `path`. */
  statfs: ({ path }: { path: string }): FileSystemUsage => {
    const stats = statfsSync(path, { bigint: true });
    return {
      bsize: String(stats.bsize),
      blocks: String(stats.blocks),
      bfree: String(stats.bfree),
      bavail: String(stats.bavail),
      files: String(stats.files),
      ffree: String(stats.ffree),
    };
  },
  /** Whether the directory can be listed: it is opened and its first entry read (or it throws). */
  listable: ({ path }: { path: string }): true => {
    const dir = opendirSync(path);
    try {
      dir.readSync();
    } finally {
      dir.closeSync();
    }
    return true;
  },
};

export type FileOperations = typeof fileOperations;
