import {
  closeSync,
  constants,
  fstatSync,
  mkdirSync,
  openSync,
  readlinkSync,
  rmdirSync,
} from "node:fs";
import { open } from "node:fs/promises";
import { join } from "node:path";
import { DirectoryHandle, O_PATH, openDirectory } from "../linux/descriptors.ts";
import { isErrno } from "../linux/errno.ts";
import { type FdMount, fdMount, gate } from "../linux/gate.ts";
import {
  classifyOpenError,
  type Directory,
  inspectEntry,
  type TargetState,
} from "../linux/inspect.ts";
import { openAt } from "../linux/openat.ts";
import { type Volume, type VolumeData, VolumePathError } from "./host.ts";

/**
 * Where the kubelet asks for an inline CSI volume:
 * <kubelet-root>/pods/<pod-uid>/volumes/kubernetes.io~csi/<volume-name>/mount.
 * The kubelet root differs between distributions (microk8s, k0s), so only the tail is fixed.
 */
export const KUBELET_CSI_VOLUME_PATH =
  /^\/(?:[^/]+\/)*pods\/([^/]+)\/volumes\/kubernetes\.io~csi\/[^/]+\/mount$/;

/** The pod uid a kubelet CSI volume path names, or undefined when it is no such path. */
export function podUidOf(targetPath: string): string | undefined {
  return KUBELET_CSI_VOLUME_PATH.exec(targetPath)?.[1];
}

// The kubelet root is opened as the kubelet names it (links followed); every name below it
// without following a link.
const WALK_ROOT = O_PATH | constants.O_DIRECTORY;
const WALK_STEP = O_PATH | constants.O_DIRECTORY | constants.O_NOFOLLOW;
const VOLUME_MOUNT_FIX =
  "unmount what was mounted in the kubelet's directories; the driver looks only into local file systems";
// pods, <pod-uid>, volumes, kubernetes.io~csi, <volume-name>, mount
const TAIL_SEGMENTS = 6;

/** The name of the target inside the volume directory. */
export const TARGET_NAME = "mount";

// The kubelet writes a few hundred bytes; anything larger is not its record.
const MAX_VOLUME_DATA_BYTES = 64 * 1024;

/** The target's volume directory, held open (see Volume in ./host.ts). */
export class VolumeDirectory implements Volume {
  readonly targetLocation: string;

  constructor(
    private readonly handle: DirectoryHandle,
    /** Where the walk found it, with every link above the kubelet root resolved. */
    location: string,
  ) {
    this.targetLocation = join(location, TARGET_NAME);
  }

  get key(): string {
    return `${this.handle.dev}:${this.handle.ino}`;
  }

  target(): TargetState {
    return inspectEntry(this.handle, TARGET_NAME);
  }

  createTarget(mode: number): boolean {
    try {
      mkdirSync(this.handle.entry(TARGET_NAME), { mode });
    } catch (error) {
      if (isErrno(error, "EEXIST")) return false;
      throw error;
    }
    return true;
  }

  removeTarget(): void {
    // Only the last name is looked up again, inside the volume directory held open; rmdir
    // never follows a link there.
    rmdirSync(this.handle.entry(TARGET_NAME));
  }

  holds(dir: Directory): boolean {
    return dir.location() === this.targetLocation;
  }

  record(): Promise<VolumeData | undefined> {
    return readVolumeData(this.handle);
  }

  hold(): DirectoryHandle | undefined {
    try {
      return openDirectory(this.handle.path);
    } catch {
      return undefined;
    }
  }

  [Symbol.dispose](): void {
    this.handle.close();
  }
}

/**
 * Opens the volume directory of `targetPath` one name at a time, never following a symbolic
 * link below the kubelet root: a link in the pod's own directories would let the bind mount, an
 * unmount or a removal land elsewhere. Links above it (a kubelet root that is itself a link) are
 * followed, as the kubelet follows them. Throws VolumePathError when the walk stops early.
 */
export function openVolumeDir(targetPath: string): VolumeDirectory {
  const segments = targetPath.split("/");
  const kubeletRoot = segments.slice(0, -TAIL_SEGMENTS).join("/") || "/";
  const names = segments.slice(-TAIL_SEGMENTS, -1);
  let fd: number;
  try {
    fd = openSync(kubeletRoot, WALK_ROOT);
  } catch (error) {
    if (isErrno(error, "ENOENT")) throw new VolumePathError("missing", kubeletRoot);
    if (isErrno(error, "ENOTDIR")) throw new VolumePathError("not-directory", kubeletRoot);
    throw error;
  }
  try {
    const location = join(readlinkSync(`/proc/self/fd/${fd}`), ...names);
    // Nothing is looked up in a directory before its mount is judged (../linux/gate.ts): a name
    // looked up in a file system that stops answering would hold the caller. The directories on
    // the way are only passed through; the one at the end is held, with what it is.
    let mount = judged(fd, kubeletRoot, undefined);
    for (const [index, name] of names.entries()) {
      const entry = `/proc/self/fd/${fd}/${name}`;
      const at = join(kubeletRoot, ...names.slice(0, index + 1));
      let next: number;
      try {
        next = openAt(fd, name, WALK_STEP);
      } catch (error) {
        throw new VolumePathError(classifyOpenError(entry, error, mount.mountId), at);
      }
      closeSync(fd);
      fd = next;
      mount = judged(fd, at, mount);
    }
    const volume = new VolumeDirectory(new DirectoryHandle(fd, mount), location);
    fd = -1;
    return volume;
  } finally {
    if (fd !== -1) closeSync(fd);
  }
}

/** The mount of the directory `fd` at `at`, judged when it is not the mount `below`'s. */
function judged(fd: number, at: string, below: FdMount | undefined): FdMount {
  const mount = fdMount(fd);
  if (mount.mountId !== below?.mountId) {
    gate.judge(mount, { at, fix: VOLUME_MOUNT_FIX, open: false });
  }
  return mount;
}

// Not followed if a link; the handle opens nothing (no FIFO waits, no device driver runs).
const VOLUME_DATA_PEEK_FLAGS = O_PATH | constants.O_NOFOLLOW;
// The reopening of a regular file already checked; never a controlling terminal.
const VOLUME_DATA_READ_FLAGS = constants.O_RDONLY | constants.O_NONBLOCK | constants.O_NOCTTY;

/**
 * The kubelet's record in the volume directory; undefined when there is none to read. Only a
 * regular file of at most 64 KiB is opened for reading, and read off the event loop: a link, a
 * FIFO, a device, a socket or a larger file is no record of the kubelet's, found out without
 * opening it.
 */
export async function readVolumeData(volumeDir: DirectoryHandle): Promise<VolumeData | undefined> {
  let handle: number;
  try {
    handle = openAt(volumeDir.fd, "vol_data.json", VOLUME_DATA_PEEK_FLAGS);
  } catch (error) {
    if (isErrno(error, "ENOENT")) return undefined;
    throw error;
  }
  let text: string;
  try {
    // A file mounted over the record's name is no record of the kubelet's, and is not looked at:
    // its file system could stop answering.
    if (fdMount(handle).mountId !== volumeDir.mountId) return undefined;
    const stat = fstatSync(handle);
    if (!stat.isFile() || stat.size > MAX_VOLUME_DATA_BYTES) return undefined;
    // Through the handle: the very file that was checked.
    const file = await open(`/proc/self/fd/${handle}`, VOLUME_DATA_READ_FLAGS);
    try {
      // One byte more than allowed: a file that grew since fstat is caught too.
      const buffer = Buffer.alloc(MAX_VOLUME_DATA_BYTES + 1);
      const { bytesRead } = await file.read(buffer, 0, buffer.length, 0);
      if (bytesRead > MAX_VOLUME_DATA_BYTES) return undefined;
      text = buffer.toString("utf8", 0, bytesRead);
    } finally {
      await file.close();
    }
  } finally {
    closeSync(handle);
  }
  try {
    const data = JSON.parse(text) as Record<string, unknown>;
    return {
      driverName: typeof data.driverName === "string" ? data.driverName : undefined,
      volumeHandle: typeof data.volumeHandle === "string" ? data.volumeHandle : undefined,
    };
  } catch {
    // A torn or foreign file says nothing about the volume.
    return undefined;
  }
}
