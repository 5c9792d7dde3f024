// What a survey of the Workload API directory is asked and answers (./survey.ts runs it in the
// inspector's child): small, bounded lists and counts, whatever the directory holds.

import type { MountInfo } from "../linux/mountinfo.ts";

/** An Unusable's error when only reading: its label is not one for containers. */
export const NOT_LABELLED = "not labelled";

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
  /** Other callers' handles of the directory, sharing this survey (see Survey.shared). */
  others?: string[];
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
  /** For each of SurveyArgs.others: whether it is the directory surveyed. */
  shared?: boolean[];
}
