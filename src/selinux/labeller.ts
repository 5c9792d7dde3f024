import { basename, join } from "node:path";
import { type Inspect, InspectionError } from "../linux/inspector.ts";
import type { Logger } from "../ops/log.ts";
import { LogKey } from "../ops/log-keys.ts";
import { contextParts } from "./context.ts";
import type { surveyLabels } from "./survey.ts";
import { NOT_LABELLED, type Survey } from "./survey-types.ts";

/**
 * Keeps the Workload API directory usable by containers under SELinux (./survey.ts says what it
 * labels and what it leaves alone; the survey runs in the inspector's child, off the event loop),
 * and says what a failure means on this node:
 * - enforcing: pods would be denied the socket, so the publish fails (FAILED_PRECONDITION) with
 *   the fix for the node and for the deployment;
 * - permissive: nothing is denied, so labelling is best effort: a warning, a counter and a note
 *   on /readyz, and the publish goes on, as the Go reference driver's does;
 * - a node whose mode cannot be read (no selinuxfs in the container, or --selinux-label on on a
 *   node without SELinux) is taken as enforcing.
 * A survey that does not answer in time is "unknown", which a publish answers UNAVAILABLE.
 */

export type LabelOutcome =
  /** What pods need is usable; `note` says what was left alone, if anything. */
  | { kind: "usable"; note?: string }
  /** Not usable, on a permissive node: the publish goes on. */
  | { kind: "best-effort"; problem: string }
  /** Not usable, on an enforcing node: the publish fails. */
  | { kind: "refused"; problem: string }
  /** The survey did not answer. */
  | { kind: "unknown"; problem: string };

export type LabelOperations = { surveyLabels: typeof surveyLabels };

export interface LabellerOptions {
  inspector: Inspect<LabelOperations>;
  socketDir: string;
  context: string;
  /** Pods see the file systems mounted in the directory (--recursive-bind). */
  recursiveBind: boolean;
  logger?: Logger;
}

// Paths a message names one by one; beyond, a fix names them with a wildcard.
const NAMED = 5;
// Callers that share one survey at most: its request stays small.
const MAX_SHARED = 64;

/** Callers waiting for one survey: their handles of the directory, the first one surveyed. */
interface Batch {
  dirs: string[];
  survey: Promise<Survey>;
}

/**
 * Labelling work for concurrent publishes is shared, not repeated one after another: one survey
 * runs at a time, and the callers that ask meanwhile share the next one (not the running one: it
 * started before they asked, and may have missed what they need). The child checks that each
 * caller's handle is the directory it surveys; one that is not gets a survey of its own.
 */
export class Labeller {
  // What was last logged as left alone or best effort: each is logged when it changes.
  private logged = { leftAlone: "", bestEffort: "" };
  private running: Promise<unknown> = Promise.resolve();
  private waiting: Batch | undefined;

  constructor(private readonly options: LabellerOptions) {}

  /**
   * Labels what needs it, and says what the result means (see above). `dir` is where the child
   * opens the directory: a held handle's sharedPath, so that what is labelled is what is bound.
   */
  async ensure(dir: string = this.options.socketDir): Promise<LabelOutcome> {
    const { context } = this.options;
    let survey: Survey;
    try {
      survey = await this.shared(dir);
    } catch (error) {
      if (error instanceof InspectionError) return { kind: "unknown", problem: error.message };
      throw error;
    }
    const note = leftAloneNote(survey);
    this.logOnce("leftAlone", note);
    // A missing directory is the publish's to report, as UNAVAILABLE.
    const unusable = survey.missing ? undefined : whyUnusable(survey, context);
    if (unusable === undefined) {
      this.logged.bestEffort = "";
      return note ? { kind: "usable", note } : { kind: "usable" };
    }
    const fix = unusable.fixes.length > 0 ? `; fix: ${unusable.fixes.join("; ")}` : "";
    if (survey.enforce === "0") {
      const problem = `${unusable.what}${fix}`;
      this.logOnce(
        "bestEffort",
        `SELinux labelling failed; the node is permissive, so pods work, but would be denied once it enforces: ${problem}`,
      );
      return { kind: "best-effort", problem };
    }
    const unread =
      survey.enforce === null
        ? " (SELinux's mode cannot be read here, there is no /sys/fs/selinux/enforce: taken as enforcing)"
        : "";
    return { kind: "refused", problem: `${unusable.what}${unread}${fix}` };
  }

  /** A survey of `dir`, shared with the callers that ask while another runs (see above). */
  private async shared(dir: string): Promise<Survey> {
    let batch = this.waiting;
    if (!batch || batch.dirs.length >= MAX_SHARED) {
      const dirs: string[] = [];
      const survey = this.running.then(() => {
        if (this.waiting?.dirs === dirs) this.waiting = undefined;
        const [first = dir, ...others] = dirs;
        return this.survey(first, others);
      });
      this.running = survey.catch(() => {});
      batch = { dirs, survey };
      this.waiting = batch;
    }
    const index = batch.dirs.push(dir) - 1;
    const survey = await batch.survey;
    if (index === 0 || survey.shared?.[index - 1]) return survey;
    // Another directory by now (replaced on the node): its own survey.
    return this.survey(dir, []);
  }

  private async survey(dir: string, others: string[]): Promise<Survey> {
    const { socketDir, context, recursiveBind } = this.options;
    const survey = await this.options.inspector.run(
      "surveyLabels",
      {
        dir,
        name: socketDir,
        context,
        write: true,
        recursiveBind,
        ...(others.length > 0 && { others }),
      },
      `labelling ${JSON.stringify(socketDir)} for SELinux`,
    );
    // Once per survey, however many callers share it.
    this.logLabelled(survey);
    return survey;
  }

  private logLabelled(survey: Survey): void {
    if (survey.labelledCount === 0) return;
    this.options.logger?.info("labelled for SELinux", {
      [LogKey.context]: this.options.context,
      [LogKey.count]: survey.labelledCount,
      [LogKey.paths]: survey.labelled,
    });
  }

  private logOnce(what: keyof Labeller["logged"], line: string | undefined): void {
    if (line !== undefined && line !== this.logged[what]) this.options.logger?.warn(line);
    this.logged[what] = line ?? "";
  }
}

/** What was left alone, for the log and /readyz; undefined when nothing was. */
export function leftAloneNote(survey: Survey): string | undefined {
  if (survey.leftAloneCount === 0) return undefined;
  const named = survey.leftAlone.map((entry) => `${JSON.stringify(entry.path)}: ${entry.why}`);
  const more = survey.leftAloneCount - named.length;
  return `SELinux labelling left alone, not labelled: ${named.join("; ")}${more > 0 ? `; and ${more} more` : ""}`;
}

/**
 * Why pods could not use what they need from the directory, and the fixes; undefined when they
 * can. For the doctor too.
 */
export function whyUnusable(
  survey: Survey,
  context: string,
): { what: string; fixes: string[] } | undefined {
  const problems: string[] = [];
  const fixes: string[] = [];
  const type = contextParts(context)?.type ?? context;
  if (survey.problem) problems.push(survey.problem);
  if (survey.unusableCount > 0) {
    const named = survey.unusable.map((entry) => {
      const error = entry.error === NOT_LABELLED ? "" : `: ${entry.error}`;
      return `${JSON.stringify(entry.path)} (${entry.label ?? "unlabelled"}${error})`;
    });
    const more = survey.unusableCount - named.length;
    problems.push(
      `${named.join(", ")}${more > 0 ? ` and ${more} more` : ""} ${survey.unusableCount === 1 ? "is" : "are"} not labelled for containers (type ${type}, level ${contextParts(context)?.level ?? "s0"})`,
    );
    fixes.push(nodeFix(survey, context));
    if (survey.unusable.some((entry) => entry.error === "EROFS")) {
      fixes.push(
        "or mount the directory's parent read-write into the driver's container (not the directory itself read-only, as SPIRE's chart does), so that the driver labels the directory and what the agent re-creates in it",
      );
    }
  }
  const roots = survey.mountRoots.filter((root) => !root.usable);
  if (roots.length > 0) {
    const named = roots.map(
      (root) => `${JSON.stringify(root.path)} (${root.error ?? root.label ?? "unlabelled"})`,
    );
    problems.push(
      `the file systems mounted in it, which pods see with --recursive-bind, are not labelled for containers and are not the driver's to relabel: ${named.join(", ")}`,
    );
    fixes.push(`mount them with -o context=${context}, or label their files on the node`);
  }
  if (problems.length === 0) return undefined;
  return {
    what: `the Workload API directory ${JSON.stringify(survey.name)} is not usable by containers under SELinux: ${problems.join("; ")}`,
    fixes,
  };
}

/**
 * `chcon` on the node for what is not labelled, at the directory's path on the node: the
 * hostPath behind the driver's view of it, which the mount table's root field tells when the
 * directory is a bind of it (a container's hostPath volume).
 */
function nodeFix(survey: Survey, context: string): string {
  const parts = contextParts(context);
  const levels = new Set(survey.unusable.map((entry) => entry.label?.split(":")[3]));
  const level = [...levels].some((each) => each !== undefined && each !== parts?.level)
    ? ` -l ${parts?.level}`
    : "";
  // A mount whose root is a directory of its file system is a bind of it, as a container's
  // hostPath volume is: the directory's path on the node is that root and what follows. A whole
  // file system mounted (root "/") says nothing more than the path the driver sees.
  const { holder, location } = survey;
  const rest = holder
    ? location.slice(holder.mountPoint === "/" ? 0 : holder.mountPoint.length)
    : "";
  const bound = holder !== undefined && holder.root !== "/";
  const nodePath = bound && holder ? (rest ? join(holder.root, rest) : holder.root) : survey.name;
  const names = survey.unusable.map((entry) =>
    entry.path === survey.name ? nodePath : join(nodePath, basename(entry.path)),
  );
  const paths =
    survey.unusableCount > NAMED ? `${nodePath} ${nodePath}/*` : [...new Set(names)].join(" ");
  const where =
    bound && holder
      ? ` (${JSON.stringify(nodePath)} is the hostPath behind ${JSON.stringify(survey.name)}: that directory of the ${holder.fsType} file system ${holder.source}, as the node mounts it)`
      : "";
  return `on the node: chcon -h -t ${parts?.type ?? context}${level} ${paths}${where}, then check with ls -Z`;
}
