import type { status } from "@grpc/grpc-js";
import type { DirectoryHandle } from "../linux/descriptors.ts";
import type { Directory, TargetState } from "../linux/inspect.ts";
import type { AuditRecord } from "./audit.ts";
import { quote } from "./errors.ts";

/**
 * What the node service works on and with, as interfaces: the machine (a real one in
 * ./machine.ts, a stand-in in the unit tests), the labeller and the events it reports. The CSI
 * rules in ./node.ts, ./publish.ts, ./unpublish.ts and ./stats.ts see the machine only through
 * these.
 */

/** What the kubelet records beside the target before publishing: <volume-dir>/vol_data.json. */
export interface VolumeData {
  driverName?: string;
  volumeHandle?: string;
}

/**
 * A target's volume directory (<kubelet-root>/pods/<uid>/volumes/kubernetes.io~csi/<volume>),
 * held open from the walk that found it; everything at the target is reached through it.
 */
export interface Volume extends Disposable {
  /** The volume's identity: its volume directory's (device, inode), whatever path names it. */
  readonly key: string;
  /** Where the target is, every link above the kubelet root resolved (as the mount table says). */
  readonly targetLocation: string;
  /** What is at the target now; a directory there is held open until disposed of. */
  target(): TargetState;
  /** Creates the target directory; false when something is there already. */
  createTarget(mode: number): boolean;
  /** Removes the target directory, never recursively; throws the system's error. */
  removeTarget(): void;
  /** Whether `dir`, opened as the target, is still where the walk found it (not moved since). */
  holds(dir: Directory): boolean;
  /** The kubelet's record beside the target, if it left one that can be read. */
  record(): Promise<VolumeData | undefined>;
  /** A handle of its own on the volume directory (for the census); undefined when none is left. */
  hold(): DirectoryHandle | undefined;
}

/** The Workload API directory held open, or the status and message that say why not. */
export type Source<D extends Directory = Directory> =
  | { ok: true; dir: D }
  | { ok: false; code: status; problem: string };

/** The walk to a target's volume directory stopped early: at `path` is nothing, a link, or a file. */
export class VolumePathError extends Error {
  override name = "VolumePathError";

  constructor(
    readonly kind: "missing" | "symlink" | "not-directory",
    /** The first path on the way that is not a directory. */
    readonly path: string,
  ) {
    super(`${path}: ${kind}`);
  }

  /** What stopped the walk, for a message about the target. */
  get problem(): string {
    const at = quote(this.path);
    if (this.kind === "missing") return `it does not exist (${at} is missing)`;
    if (this.kind === "symlink") {
      return `passes through a symbolic link below the kubelet root (${at})`;
    }
    return `passes through ${at}, which is not a directory`;
  }
}

/** The machine as the node service sees it. */
export interface NodeHost {
  /** The volume directory of `targetPath`, held open; VolumePathError when the walk stops. */
  openVolume(targetPath: string): Volume;
  /** The Workload API directory as the driver sees it now (./source.ts says how it is opened). */
  openSource(): Source;
  /** Whether the directory held open has no entries. */
  isEmpty(dir: Directory): boolean;
  /** Sets the mode of the directory held open. */
  chmod(dir: Directory, mode: number): void;
  /** The device of the directory that holds the Workload API directory; undefined when missing. */
  sourceParentDevice(): number | undefined;
  /** What is mounted with this mount id, for an error message. */
  describeMount(mountId: number): Promise<string>;
}

/**
 * What labelling the Workload API directory came to (../selinux/labeller.ts says each kind): a
 * publish goes on when usable or best effort, fails when refused, answers UNAVAILABLE when unknown.
 */
export type LabelOutcome =
  | { kind: "usable" }
  | { kind: "best-effort" | "refused" | "unknown"; problem: string };

/** Makes the Workload API directory usable by pods (SELinux labels), opening it at `dir`. */
export interface Labeller {
  ensure(dir: string): Promise<LabelOutcome>;
}

/** What the node service tells the rest of the driver (metrics, logs, restarts). */
export interface NodeEvents {
  /** A `mount` or `umount` failed. */
  mountFailed(operation: "mount" | "umount"): void;
  /** A publish's labelling failed, by the node's SELinux mode. */
  labelFailed(mode: "permissive" | "enforcing"): void;
  /**
   * The directory the driver sees was removed on the node and cannot be reached again from
   * here: only a new mount (a restarted container) gets the node's current one.
   */
  sourceRemoved(problem: string): void;
  /** A publish or unpublish ended: for which pod, and how. */
  audit(record: AuditRecord): void;
}

/** Events nobody listens to. */
export const NO_EVENTS: NodeEvents = {
  mountFailed() {},
  labelFailed() {},
  sourceRemoved() {},
  audit() {},
};
