import {
  type BigIntStats,
  closeSync,
  constants,
  type Dir,
  fstatSync,
  opendirSync,
  openSync,
  readlinkSync,
  statSync,
} from "node:fs";
import { join } from "node:path";
import { O_PATH } from "../linux/descriptors.ts";
import { isErrno } from "../linux/errno.ts";
import { changedLately } from "../linux/file-operations.ts";
import type { MountInfo } from "../linux/mountinfo.ts";
import { EntryLabeller, placeOf } from "./entry-labeller.ts";
import {
  holderOf,
  mountRootLabel,
  mountsIn,
  mountTable,
  readEnforce,
  writable,
} from "./survey-reads.ts";
import type { Survey, SurveyArgs, Unusable } from "./survey-types.ts";

export type { Survey } from "./survey-types.ts";

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
 * read again under its name. What is decided for each entry is in ./entry-labeller.ts; what is
 * read of the node besides the entries, in ./survey-reads.ts; what it is asked and answers, in
 * ./survey-types.ts.
 *
 * A generator: it yields after each entry, so that the child's runtime can say that it
 * progresses however many entries there are (../linux/inspector-child.ts).
 */

// Lists in a survey hold this many paths; the counts say how many there were.
const LISTED = 20;
// Past this many entries the rest is not looked at: the directory is the agent's, not a store.
export const MAX_ENTRIES = 1_000_000;

let kept: { key: string; survey: Survey } | undefined;

/**
 * The survey of the Workload API directory (see above). `others` are other handles of callers
 * that share it: `shared` says, for each, whether it is the very directory surveyed.
 */
export async function* surveyLabels(args: SurveyArgs): AsyncGenerator<void, Survey, undefined> {
  const enforce = readEnforce();
  const others = args.others ?? [];
  let fd: number;
  try {
    fd = openSync(args.dir, O_PATH | constants.O_DIRECTORY);
  } catch (error) {
    const empty = {
      ...emptySurvey(enforce, args.name, args.name),
      shared: others.map(() => false),
    };
    if (isErrno(error, "ENOENT") || isErrno(error, "ENOTDIR")) return { ...empty, missing: true };
    return {
      ...empty,
      problem: `cannot open ${JSON.stringify(args.name)}: ${(error as Error).message}`,
    };
  }
  try {
    const before = fstatSync(fd, { bigint: true });
    const shared = others.map((other) => sameFile(other, before));
    const survey = yield* surveyHeld(args, fd, before, enforce);
    return { ...survey, shared };
  } finally {
    closeSync(fd);
  }
}

function sameFile(path: string, stat: BigIntStats): boolean {
  try {
    const other = statSync(path, { bigint: true });
    return other.dev === stat.dev && other.ino === stat.ino;
  } catch {
    return false;
  }
}

/** The survey of the directory held as `fd`, or the last one while it is unchanged. */
async function* surveyHeld(
  args: SurveyArgs,
  fd: number,
  before: BigIntStats,
  enforce: Survey["enforce"],
): AsyncGenerator<void, Survey, undefined> {
  // Not `dir`: a handle's path names another descriptor at each call.
  const handle = `/proc/self/fd/${fd}`;
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
  const survey = yield* surveyDirectory(args, fd, location, mounts, holderOf(table, fd), enforce);
  const after = fstatSync(fd, { bigint: true });
  const changed = after.mtimeNs !== before.mtimeNs || after.ctimeNs !== before.ctimeNs;
  kept = changed || changedLately(after) ? undefined : { key, survey };
  return survey;
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

function* surveyDirectory(
  args: SurveyArgs,
  fd: number,
  location: string,
  mounts: MountInfo[],
  holder: Survey["holder"],
  enforce: Survey["enforce"],
): Generator<void, Survey, undefined> {
  const survey = emptySurvey(enforce, args.name, location);
  if (holder) survey.holder = holder;
  const place = placeOf(fstatSync(fd));
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
      yield;
      if (++survey.entries > MAX_ENTRIES) {
        survey.problem = `${JSON.stringify(args.name)} holds more than ${MAX_ENTRIES} entries; the rest were not looked at`;
        break;
      }
      const path = join(location, entry.name);
      // Never looked at: a file system that hangs would hang here. Its label is read below.
      if (mountPoints.has(path)) continue;
      labeller.entry(path, `${handle}/${entry.name}`, join(args.name, entry.name), place);
    }
  } catch (error) {
    survey.problem = `cannot list ${JSON.stringify(args.name)}: ${(error as Error).message}`;
  } finally {
    dir.closeSync();
  }
  if (args.recursiveBind) {
    for (const mount of mounts) {
      yield;
      if (survey.mountRoots.length >= LISTED) break;
      survey.mountRoots.push(mountRootLabel(mount.mountPoint, args));
    }
  }
  return survey;
}
