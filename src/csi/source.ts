import { posix, relative } from "node:path";
import { status } from "@grpc/grpc-js";
import type { DirectoryHandle } from "../linux/descriptors.ts";
import type { MountInfo } from "../linux/mountinfo.ts";
import { openTrustedDirectory, UnsafePathError } from "../linux/trusted-path.ts";
import { RpcError } from "../rpc/status.ts";
import { internal, quote } from "./errors.ts";
import type { Source } from "./host.ts";

/** What the driver knows of the Workload API directory (see NodeServiceOptions). */
export interface SourceOptions {
  workloadApiSocketDir: string;
  /** Follow symbolic links on its path (--allow-symlinked-socket-dir). */
  allowSymlinkedSocketDir?: boolean;
  /**
   * Told when the directory the driver sees was removed on the node and cannot be reached again
   * from here: only a new mount (a restarted container) gets the node's current one.
   */
  onSourceRemoved?: (problem: string) => void;
}

/** The Workload API directory held open, or why not (see Source in ./host.ts). */
export type SourceState = Source<DirectoryHandle>;

/**
 * The Workload API directory as the driver sees it now, opened the way the kubelet's paths are
 * (../linux/trusted-path.ts): a symbolic link on the way, a directory on the way that anyone
 * but root could change, or a file system mounted over it or on its way that could stop
 * answering (FUSE, NFS, ...), is refused (FAILED_PRECONDITION). Missing, or removed while a mount still
 * shows it, it is UNAVAILABLE, which the kubelet retries.
 */
export function inspectSource(options: SourceOptions): SourceState {
  const socketDir = options.workloadApiSocketDir;
  const unavailable = (problem: string): SourceState => ({
    ok: false,
    code: status.UNAVAILABLE,
    problem,
  });
  let found: ReturnType<typeof openTrustedDirectory>;
  try {
    found = openTrustedDirectory(socketDir, {
      followLinks: options.allowSymlinkedSocketDir === true,
    });
  } catch (error) {
    if (error instanceof UnsafePathError) {
      return {
        ok: false,
        code: status.FAILED_PRECONDITION,
        problem: unsafeProblem(socketDir, error),
      };
    }
    throw internal(
      `inspecting the Workload API directory ${quote(socketDir)}: ${(error as Error).message}`,
      error,
    );
  }
  const missingPart = (at: string) => (at === socketDir ? "" : ` (${quote(at)} is missing)`);
  switch (found.kind) {
    case "directory":
      return { ok: true, dir: found.handle };
    case "missing":
      return unavailable(
        `the Workload API socket directory ${quote(socketDir)} does not exist${missingPart(found.at)} (is the SPIFFE agent running?)`,
      );
    case "not-directory":
      return unavailable(
        `the Workload API socket directory ${quote(socketDir)} is not a directory (${quote(found.at)} is not one)`,
      );
    case "removed": {
      // The driver's own view is a removed directory: in a container, the hostPath mount of a
      // directory the node has since removed and re-created. Binding it would give pods an
      // empty, dead directory, and nothing in this process can reach the node's new one.
      const what =
        found.at === socketDir
          ? `the Workload API socket directory ${quote(socketDir)} was removed`
          : `the Workload API socket directory ${quote(socketDir)} is out of reach: ${quote(found.at)}, on its path, was removed`;
      const problem = `${what} on the node after the driver started, and the driver's mount still holds the removed one; the driver restarts so that it sees the node's current one`;
      options.onSourceRemoved?.(problem);
      return unavailable(problem);
    }
  }
}

/** The Workload API directory, held open, or the RpcError saying why it cannot be published. */
export function openSource(options: SourceOptions): DirectoryHandle {
  const source = inspectSource(options);
  if (!source.ok) throw new RpcError(source.code, source.problem);
  return source.dir;
}

/**
 * The Workload API directory held open, or undefined whatever the reason: never throws, and
 * never waits on a file system mounted over the directory (which is refused, see
 * ../linux/gate.ts).
 */
export function openSourceIfThere(options: SourceOptions): DirectoryHandle | undefined {
  try {
    const source = inspectSource(options);
    return source.ok ? source.dir : undefined;
  } catch {
    return undefined;
  }
}

/** A refusal of the directory's path, with what to change. */
export function unsafeProblem(socketDir: string, error: UnsafePathError): string {
  return `the Workload API socket directory ${quote(socketDir)} is refused: ${error.message}; ${error.fix}`;
}

/** Where a bind of a directory comes from, as the mount table says of the bind. */
export interface BindOrigin {
  /** major:minor of its file system. */
  device: string;
  /** The directory, from its file system's root. */
  root: string;
}

/**
 * What the mount table shows for a bind of the directory `source` (held open): the device of
 * its mount and its place in that file system. Undefined when its mount is not in `table` or
 * its place cannot be told (a removed directory).
 */
export function bindOrigin(source: DirectoryHandle, table: MountInfo[]): BindOrigin | undefined {
  const mount = table.find((entry) => entry.mountId === source.mountId);
  if (!mount) return undefined;
  let location: string;
  try {
    location = source.location();
  } catch {
    return undefined;
  }
  const inside = relative(mount.mountPoint, location);
  if (inside.startsWith("..") || location.endsWith(" (deleted)")) return undefined;
  return { device: mount.device, root: posix.join(mount.root, inside) };
}
