import {
  accessSync,
  closeSync,
  constants,
  type Dir,
  fstatSync,
  lstatSync,
  opendirSync,
  openSync,
  readFileSync,
  readlinkSync,
  type Stats,
} from "node:fs";
import { join } from "node:path";
import { O_PATH, readMountId } from "../linux/descriptors.ts";
import { isErrno } from "../linux/errno.ts";
import { changedLately } from "../linux/file-operations.ts";
import { stillWorking } from "../linux/inspector.ts";
import { type MountInfo, readMountTable } from "../linux/mountinfo.ts";
import { usableByContainers } from "./context.ts";
import { fileLabel, getLabel, setFileLabel } from "./xattr.ts";

/**
 * What the Workload API directory holds for pods, and its SELinux labels: read, and with
 * `write`, set. It runs in the inspector's child process (../linux/inspector.ts): every call
 * here may block on a file system that does not answer.
 *
 * Only what the agent made for pods is labelled: the directory itself, and the sockets, symbolic
 * links (the link, never what it points to), regular files and directories directly in it that
 * belong to the directory's owner. Each entry is opened without following links and labelled
 * through that descriptor, so the label goes to the inode that was checked, never to whatever
 * the name leads to a moment later. Left alone, and reported:
 * - a non-directory with more than one link: a hard link to a file elsewhere (the agent's user
 *   can link any file it can reach into its directory) is that file, and labelling it would
 *   make it usable from every container;
 * - anything not owned by the directory's owner, and anything but a socket, link, file or
 *   directory (a FIFO, a device);
 * - the roots of file systems mounted in the directory. They are not the agent's to relabel; with
 *   --recursive-bind pods see them, so their labels are read and checked.
 *
 * An unchanged directory costs a stat: the answer is kept, keyed by the directory's inode,
 * modification and change times, whether it is writable and (with --recursive-bind) the mounts
 * in it. An entry that is replaced while it is labelled (the agent re-creating its socket) is
 * read again under its name.
 */

export interface SurveyArgs {
  /** The directory as this process can open it: `/proc/<pid>/fd/<n>` of a driver's handle. */
  dir: string;
  /** Its name in messages (the configured path). */
  name: string;
  /** The label to set; a label with its type and level is usable already. */
  context: string;
  /** Set labels (the driver) or only read them (the doctor). */
  write: boolean;
  /** Pods see the file systems mounted in the directory (--recursive-bind): check their roots. */
  recursiveBind: boolean;
}

/** A file and its label (null: none). */
export interface Labelled {
  path: string;
  label: string | null;
}

export interface Unusable extends Labelled {
  /** Why it is not usable: could not be labelled (the errno's code), or NOT_LABELLED. */
  error: string;
}

/** An Unusable's error when only reading: its label is not one for containers. */
export const NOT_LABELLED = "not labelled";

export interface LeftAlone {
  path: string;
  why: string;
}

export interface Survey {
  /** /sys/fs/selinux/enforce: "1" enforcing, "0" permissive; null when it cannot be read. */
  enforce: "0" | "1" | null;
  /** The directory does not exist (the publish says so itself). */
  missing: boolean;
  /** What stopped the survey (the directory cannot be listed, say). */
  problem?: string;
  /** Answered from the last survey of the unchanged directory. */
  cached: boolean;
  /** Entries read. */
  entries: number;
  /** Labelled by this survey: a few paths, and how many in all. */
  labelled: string[];
  labelledCount: number;
  /** Made for pods, and not usable by them: a few, and how many in all. */
  unusable: Unusable[];
  unusableCount: number;
  leftAlone: LeftAlone[];
  leftAloneCount: number;
  /** With recursiveBind: the roots of the file systems mounted in the directory, and theirs. */
  mountRoots: (Labelled & { usable: boolean; error?: string })[];
  /** The directory and its sockets with their labels, as found: a few. */
  seen: Labelled[];
  /** The directory's name in messages (the configured path). */
  name: string;
  /** Where the directory is, and the mount it is on (the node's path of it can be told from). */
  location: string;
  holder?: Pick<MountInfo, "root" | "mountPoint" | "fsType" | "source">;
}

// Lists in a survey hold this many paths; the counts say how many there were.
const LISTED = 20;
// Past this many entries the rest is not looked at: the directory is the agent's, not a store.
export const MAX_ENTRIES = 1_000_000;
// A name replaced again each time it is read is given up on after this many reads (it is
// labelled at the next survey).
const READS_PER_ENTRY = 3;

let kept: { key: string; survey: Survey } | undefined;

/** The survey of the Workload API directory (see above). */
export async function surveyLabels(args: SurveyArgs): Promise<Survey> {
  const enforce = readEnforce();
  let fd: number;
  try {
    fd = openSync(args.dir, O_PATH | constants.O_DIRECTORY);
  } catch (error) {
    if (isErrno(error, "ENOENT") || isErrno(error, "ENOTDIR")) {
      return { ...emptySurvey(enforce, args.name, args.name), missing: true };
    }
    return {
      ...emptySurvey(enforce, args.name, args.name),
      problem: `cannot open ${JSON.stringify(args.name)}: ${(error as Error).message}`,
    };
  }
  try {
    const handle = `/proc/self/fd/${fd}`;
    const before = fstatSync(fd, { bigint: true });
    // Not `dir`: a handle's path names another descriptor at each call.
    const { name, context, write, recursiveBind } = args;
    const unchanged = [name, context, write, recursiveBind, before.dev, before.ino];
    unchanged.push(before.mtimeNs, before.ctimeNs);
    let key = keyOf([...unchanged, writable(handle)]);
    // Without --recursive-bind, what is mounted in the directory later never reaches pods: the
    // mount table is read only to keep away from mount roots while entries are read.
    if (!args.recursiveBind && kept?.key === key) return { ...kept.survey, enforce, cached: true };
    const table = await mountTable();
    const location = readlinkSync(handle);
    const mounts = mountsIn(table, location);
    if (args.recursiveBind) {
      key = keyOf([...unchanged, writable(handle), mounts.map(mountKey)]);
      if (kept?.key === key) return { ...kept.survey, enforce, cached: true };
    }
    const survey = surveyDirectory(args, fd, location, mounts, holderOf(table, fd), enforce);
    const after = fstatSync(fd, { bigint: true });
    const changed = after.mtimeNs !== before.mtimeNs || after.ctimeNs !== before.ctimeNs;
    kept = changed || changedLately(after) ? undefined : { key, survey };
    return survey;
  } finally {
    closeSync(fd);
  }
}

function keyOf(parts: unknown[]): string {
  return JSON.stringify(parts, (_, value) =>
    typeof value === "bigint" ? value.toString() : value,
  );
}

const mountKey = (mount: MountInfo) => `${mount.mountId}:${mount.mountPoint}`;

function emptySurvey(enforce: Survey["enforce"], name: string, location: string): Survey {
  return {
    name,
    enforce,
    missing: false,
    cached: false,
    entries: 0,
    labelled: [],
    labelledCount: 0,
    unusable: [],
    unusableCount: 0,
    leftAlone: [],
    leftAloneCount: 0,
    mountRoots: [],
    seen: [],
    location,
  };
}

function surveyDirectory(
  args: SurveyArgs,
  fd: number,
  location: string,
  mounts: MountInfo[],
  holder: Survey["holder"],
  enforce: Survey["enforce"],
): Survey {
  const survey = emptySurvey(enforce, args.name, location);
  if (holder) survey.holder = holder;
  const owner = fstatSync(fd).uid;
  const record = {
    labelled(path: string) {
      if (survey.labelled.length < LISTED) survey.labelled.push(path);
      survey.labelledCount++;
    },
    unusable(entry: Unusable) {
      if (survey.unusable.length < LISTED) survey.unusable.push(entry);
      survey.unusableCount++;
    },
    leftAlone(path: string, why: string) {
      if (survey.leftAlone.length < LISTED) survey.leftAlone.push({ path, why });
      survey.leftAloneCount++;
    },
    seen(path: string, label: string | undefined) {
      if (survey.seen.length < LISTED) survey.seen.push({ path, label: label ?? null });
    },
  };
  const labeller = new EntryLabeller(args, record);
  labeller.label(fd, args.name, true);

  const mountPoints = new Set(mounts.map((mount) => mount.mountPoint));
  const handle = `/proc/self/fd/${fd}`;
  let dir: Dir;
  try {
    dir = opendirSync(handle);
  } catch (error) {
    survey.problem = `cannot list ${JSON.stringify(args.name)}: ${(error as Error).message}`;
    return survey;
  }
  try {
    for (let entry = dir.readSync(); entry !== null; entry = dir.readSync()) {
      stillWorking();
      if (++survey.entries > MAX_ENTRIES) {
        survey.problem = `${JSON.stringify(args.name)} holds more than ${MAX_ENTRIES} entries; the rest were not looked at`;
        break;
      }
      const path = join(location, entry.name);
      // Never looked at: a file system that hangs would hang here. Its label is read below.
      if (mountPoints.has(path)) continue;
      labeller.entry(path, `${handle}/${entry.name}`, join(args.name, entry.name), owner);
    }
  } catch (error) {
    survey.problem = `cannot list ${JSON.stringify(args.name)}: ${(error as Error).message}`;
  } finally {
    dir.closeSync();
  }
  if (args.recursiveBind) {
    for (const mount of mounts) {
      stillWorking();
      if (survey.mountRoots.length >= LISTED) break;
      survey.mountRoots.push(mountRootLabel(mount.mountPoint, args));
    }
  }
  return survey;
}

interface Recorder {
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
class EntryLabeller {
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
  entry(path: string, held: string, shown: string, owner: number): void {
    for (let read = 0; read < READS_PER_ENTRY; read++) {
      let stat: Stats;
      let label: string | undefined;
      try {
        stat = lstatSync(path);
        const why = leaveAlone(stat, owner);
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
      if (this.labelHeld(held, shown, { stat, label }, owner, listed)) return;
      // Replaced since it was read (the agent re-created it): read again.
    }
  }

  /** Labels the entry through a descriptor, if it is still the inode read; false if it is not. */
  private labelHeld(
    held: string,
    shown: string,
    read: { stat: Stats; label: string | undefined },
    owner: number,
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
      const why = leaveAlone(stat, owner);
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

/** Why an entry is not the agent's to label, or undefined when it is. */
function leaveAlone(stat: Stats, owner: number): string | undefined {
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
  if (stat.uid !== owner) {
    return `owned by uid ${stat.uid}, not by the directory's owner (uid ${owner})`;
  }
  return undefined;
}

/** The label of a mount root, read and never set. */
function mountRootLabel(
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

function errorCode(error: unknown): string {
  const { code, message } = error as NodeJS.ErrnoException;
  return code ?? message;
}

/** Whether the file system under `path` takes writes (a read-only mount answers EROFS). */
function writable(path: string): boolean {
  try {
    accessSync(path, constants.W_OK);
    return true;
  } catch {
    return false;
  }
}

async function mountTable(): Promise<MountInfo[]> {
  try {
    return await readMountTable();
  } catch {
    // Too large to read: entries are then opened whatever they are, as before.
    return [];
  }
}

/** The mounts below `location` (not the one it is on), sorted by mount point. */
function mountsIn(table: MountInfo[], location: string): MountInfo[] {
  const inside = location.endsWith("/") ? location : `${location}/`;
  return table
    .filter((mount) => mount.mountPoint.startsWith(inside))
    .sort((a, b) => (a.mountPoint < b.mountPoint ? -1 : 1));
}

/** The mount the open directory is on, for the node's path of it. */
function holderOf(table: MountInfo[], fd: number): Survey["holder"] {
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
function readEnforce(): Survey["enforce"] {
  try {
    const text = readFileSync("/sys/fs/selinux/enforce", "latin1").trim();
    return text === "1" || text === "0" ? text : null;
  } catch {
    return null;
  }
}
