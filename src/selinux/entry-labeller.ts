// What a survey decides for each entry of the Workload API directory: the agent's to label, left
// alone (and why), usable already, or labelled now through a descriptor of the inode it checked.

import { closeSync, constants, fstatSync, lstatSync, openSync, type Stats } from "node:fs";
import { O_PATH } from "../linux/descriptors.ts";
import { isErrno } from "../linux/errno.ts";
import { usableByContainers } from "./context.ts";
import { errorCode } from "./survey-reads.ts";
import { NOT_LABELLED, type SurveyArgs, type Unusable } from "./survey-types.ts";
import { fileLabel, getLabel, setFileLabel } from "./xattr.ts";

// A name replaced again each time it is read is given up on after this many reads (it is
// labelled at the next survey).
const READS_PER_ENTRY = 3;

/** The directory the entries are in: who owns it, and whether others may put entries there. */
export interface Place {
  owner: number;
  /** Its mode, as `ls` shows it (for messages). */
  mode: string;
  /**
   * Writable by its group or by others (sticky or not): any of them can move in a file they own
   * or someone else's, so its owner says nothing of who made it.
   */
  open: boolean;
}

/** The place of the directory `stat` describes. */
export function placeOf(stat: Pick<Stats, "uid" | "mode">): Place {
  return {
    owner: stat.uid,
    mode: (stat.mode & 0o7777).toString(8).padStart(4, "0"),
    open: (stat.mode & 0o022) !== 0,
  };
}

export interface Recorder {
  labelled(path: string): void;
  unusable(entry: Unusable): void;
  leftAlone(path: string, why: string): void;
  seen(path: string, label: string | undefined): void;
}

/**
 * Reads each entry's kind, owner, links and label by its path (two system calls, the common
 * case of an entry labelled already), and sets a label only through a descriptor of the inode
 * that was checked, opened under the directory held open: a name swapped meanwhile for a link to
 * a file elsewhere is never labelled, it is read again.
 */
export class EntryLabeller {
  private readonly usable = new Map<string | undefined, boolean>();

  constructor(
    private readonly args: SurveyArgs,
    private readonly record: Recorder,
  ) {}

  /** Whether a label is usable by containers, memoised: a directory holds few distinct ones. */
  isUsable(label: string | undefined): boolean {
    let usable = this.usable.get(label);
    if (usable === undefined) {
      usable = usableByContainers(label, this.args.context);
      this.usable.set(label, usable);
    }
    return usable;
  }

  /**
   * The entry `name`: `path` reads it (by the directory's location), `held` opens it (through
   * the directory's descriptor), `shown` names it in messages.
   */
  entry(path: string, held: string, shown: string, place: Place): void {
    for (let read = 0; read < READS_PER_ENTRY; read++) {
      let stat: Stats;
      let label: string | undefined;
      try {
        stat = lstatSync(path);
        const why = leaveAlone(stat, place);
        if (why) {
          this.record.leftAlone(shown, why);
          return;
        }
        label = getLabel(path);
      } catch (error) {
        // Removed since it was listed: nothing to label.
        if (isErrno(error, "ENOENT")) return;
        this.record.unusable({ path: shown, label: null, error: errorCode(error) });
        return;
      }
      const listed = stat.isSocket();
      if (this.isUsable(label)) {
        if (listed) this.record.seen(shown, label);
        return;
      }
      if (!this.args.write) {
        if (listed) this.record.seen(shown, label);
        this.record.unusable({ path: shown, label: label ?? null, error: NOT_LABELLED });
        return;
      }
      if (this.labelHeld(held, shown, { stat, label }, place, listed)) return;
      // Replaced since it was read (the agent re-created it): read again.
    }
  }

  /** Labels the entry through a descriptor, if it is still the inode read; false if it is not. */
  private labelHeld(
    held: string,
    shown: string,
    read: { stat: Stats; label: string | undefined },
    place: Place,
    listed: boolean,
  ): boolean {
    let fd: number;
    try {
      fd = openSync(held, O_PATH | constants.O_NOFOLLOW);
    } catch (error) {
      if (isErrno(error, "ENOENT")) return true;
      this.record.unusable({ path: shown, label: null, error: errorCode(error) });
      return true;
    }
    try {
      const stat = fstatSync(fd);
      if (stat.ino !== read.stat.ino || stat.dev !== read.stat.dev) return false;
      // The same inode: its links and owner are checked again, on the descriptor.
      const why = leaveAlone(stat, place);
      if (why) {
        this.record.leftAlone(shown, why);
        return true;
      }
      // Its label was read a moment ago, by path, from this very inode.
      this.set(fd, shown, read.label, listed);
      return true;
    } finally {
      closeSync(fd);
    }
  }

  private set(fd: number, path: string, label: string | undefined, listed: boolean): void {
    try {
      setFileLabel(fd, this.args.context);
      if (listed) this.record.seen(path, this.args.context);
      this.record.labelled(path);
    } catch (error) {
      if (listed) this.record.seen(path, label);
      this.record.unusable({ path, label: label ?? null, error: errorCode(error) });
    }
  }

  /** Reads the label of the open file (the directory) and, if it is not usable, sets it. */
  label(fd: number, path: string, listed: boolean): void {
    let label: string | undefined;
    try {
      label = fileLabel(fd);
    } catch (error) {
      this.record.unusable({ path, label: null, error: errorCode(error) });
      return;
    }
    if (this.isUsable(label)) {
      if (listed) this.record.seen(path, label);
      return;
    }
    if (!this.args.write) {
      if (listed) this.record.seen(path, label);
      this.record.unusable({ path, label: label ?? null, error: NOT_LABELLED });
      return;
    }
    this.set(fd, path, label, listed);
  }
}

/**
 * Why an entry is not the agent's to label, or undefined when it is. Sockets and links are the
 * agent's whoever owns them (labelling them exposes no data); a file or a directory only where
 * its owner is the directory's and nobody else can put entries there.
 */
function leaveAlone(stat: Stats, place: Place): string | undefined {
  const kind = stat.isSocket()
    ? "socket"
    : stat.isSymbolicLink()
      ? "symbolic link"
      : stat.isFile()
        ? "file"
        : stat.isDirectory()
          ? "directory"
          : undefined;
  if (kind === undefined) return "neither a socket, a link, a file nor a directory";
  if (kind !== "directory" && stat.nlink > 1) {
    return `a hard link (${stat.nlink} names): labelling it would label the ${kind} under its other names too`;
  }
  if (kind === "socket" || kind === "symbolic link") return undefined;
  if (place.open) {
    return `a ${kind} in a directory its group or others may write to (mode ${place.mode}): anyone of them could have moved it in (make the directory writable by its owner alone: chmod go-w)`;
  }
  if (stat.uid !== place.owner) {
    return `owned by uid ${stat.uid}, not by the directory's owner (uid ${place.owner})`;
  }
  return undefined;
}
