import { closeSync, constants, openSync, readdirSync, readSync } from "node:fs";
import { join } from "node:path";
import { isErrno } from "../linux/errno.ts";

import type { Logger } from "../ops/log.ts";
import { getLabel, setLabel, XattrError } from "./xattr.ts";

/**
 * SELinux labels on the Workload API directory.
 *
 * On an SELinux node every container runs as `container_t` with its own MCS categories, and may
 * only use files labelled for containers. The agent's socket directory carries a host label, and
 * nothing relabels a read-only CSI volume for the pod (the kubelet asks the runtime to relabel
 * only volumes it mounts read-write), so the driver labels the directory and everything directly
 * in it with a container type at level `s0`, which every category may use.
 */

export const SELINUX_LABEL_MODES = ["auto", "on", "off"] as const;
export type SelinuxLabelMode = (typeof SELINUX_LABEL_MODES)[number];
export const DEFAULT_SELINUX_CONTEXT = "system_u:object_r:container_file_t:s0";

const IDENTIFIER = "[A-Za-z_][A-Za-z0-9_.-]*";
const CATEGORIES = "c[0-9]+(?:\\.c[0-9]+)?(?:,c[0-9]+(?:\\.c[0-9]+)?)*";
const LEVEL = `s[0-9]+(?::${CATEGORIES})?`;
// user:role:type:level, where level is `s0`, `s0:c1,c2` or a range `s0-s0:c0.c1023`.
const CONTEXT = new RegExp(
  `^(${IDENTIFIER}):(${IDENTIFIER}):(${IDENTIFIER}):(${LEVEL}(?:-${LEVEL})?)$`,
);
// A process's context as /proc/self/attr/current gives it; policies without MLS have no level.
// Another security module's label there ("unconfined", "profile (enforce)") never has this form.
const PROCESS_CONTEXT = /^[^:\s]+:[^:\s]+:[^:\s]+(?::\S+)?$/;

/** Why `context` is not a file context (user:role:type:level), or undefined when it is. */
export function contextProblem(context: string): string | undefined {
  return CONTEXT.test(context)
    ? undefined
    : `--selinux-context must be user:role:type:level (e.g. ${DEFAULT_SELINUX_CONTEXT}), got ${JSON.stringify(context)}`;
}

function parts(context: string): { type: string; level: string } | undefined {
  const match = CONTEXT.exec(context);
  return match ? { type: match[3] as string, level: match[4] as string } : undefined;
}

/**
 * Whether a file labelled `label` is usable from every container: the configured context's type,
 * at level `s0` with no categories (a level with categories admits only pods holding them).
 */
export function usableByContainers(label: string | undefined, context: string): boolean {
  const file = label === undefined ? undefined : parts(label);
  return file !== undefined && file.type === parts(context)?.type && file.level === "s0";
}

// Small pseudo-files: one read of this many bytes takes all of them.
const READ_LIMIT = 256;

/** A file's text, from one bounded, non-blocking read; undefined when it cannot be read. */
function readSmall(path: string): string | undefined {
  let fd: number;
  try {
    fd = openSync(path, constants.O_RDONLY | constants.O_NONBLOCK);
  } catch {
    return undefined;
  }
  try {
    const buffer = Buffer.alloc(READ_LIMIT);
    const length = readSync(fd, buffer, 0, READ_LIMIT, null);
    return buffer.toString("utf8", 0, length).replace(/\0/g, "").trim();
  } catch {
    // EINVAL from /proc/self/attr/current: no security module gives this process a label.
    return undefined;
  } finally {
    closeSync(fd);
  }
}

export interface Detection {
  enabled: boolean;
  /** What was read, for the log. */
  reason: string;
}

/**
 * Whether this node runs SELinux (enforcing or permissive), from what libselinux and go-selinux
 * read too, in the order that works both on a bare node and in a privileged container:
 * 1. `/sys/fs/selinux/enforce` (selinuxfs): `1` enforcing, `0` permissive. A container's fresh
 *    sysfs usually lacks the selinuxfs mount, so its absence proves nothing.
 * 2. `/proc/self/attr/current`: the kernel gives this process's SELinux context there (e.g.
 *    `system_u:system_r:spc_t:s0` for a privileged container) whenever SELinux is enabled, in a
 *    container too; without it the read fails (EINVAL) or another module's label is there.
 */
export function detectSelinux(): Detection {
  const enforce = readSmall("/sys/fs/selinux/enforce");
  if (enforce === "1" || enforce === "0") {
    return {
      enabled: true,
      reason: `/sys/fs/selinux/enforce is ${enforce} (${enforce === "1" ? "enforcing" : "permissive"})`,
    };
  }
  const current = readSmall("/proc/self/attr/current");
  if (current !== undefined && current !== "kernel" && PROCESS_CONTEXT.test(current)) {
    return { enabled: true, reason: `the driver runs as ${current} (/proc/self/attr/current)` };
  }
  return {
    enabled: false,
    reason:
      current === undefined || current === ""
        ? "no /sys/fs/selinux/enforce, and no SELinux context in /proc/self/attr/current"
        : `no /sys/fs/selinux/enforce, and /proc/self/attr/current holds ${JSON.stringify(current)}, not an SELinux context`,
  };
}

/** Whether labels are to be set: never with `off`, always with `on`, as detected with `auto`. */
export function labellingWanted(mode: SelinuxLabelMode): Detection {
  switch (mode) {
    case "off":
      return { enabled: false, reason: "--selinux-label off" };
    case "on":
      return { enabled: true, reason: "--selinux-label on" };
    case "auto":
      return detectSelinux();
  }
}

/**
 * Keeps the Workload API directory and every entry directly in it (the agent's socket, links
 * such as SPIRE's `api.sock`, labelled themselves) labelled with the context. Nothing outside the
 * directory, and nothing below its subdirectories, is touched. Each check reads every label
 * (one readdir and one lgetxattr per entry: microseconds) and sets only those that differ, then
 * reads them back, so a directory or socket the agent re-created is labelled again.
 */
export class Labeler {
  constructor(
    private readonly socketDir: string,
    private readonly context: string,
    private readonly logger?: Logger,
  ) {}

  /** Labels what lacks the label; says why it cannot, or undefined when all is labelled. */
  ensure(): string | undefined {
    let entries: string[];
    try {
      entries = readdirSync(this.socketDir);
    } catch (error) {
      // A missing directory is reported by the publish itself, as UNAVAILABLE.
      if (isErrno(error, "ENOENT")) return undefined;
      return this.problem(error);
    }
    const labelled: string[] = [];
    try {
      // `/.`: a link at the directory's own path is followed, as the bind mount follows it.
      if (this.label(`${this.socketDir}/.`)) labelled.push(this.socketDir);
      for (const name of entries) {
        const path = join(this.socketDir, name);
        if (this.label(path)) labelled.push(path);
      }
    } catch (error) {
      return this.problem(error);
    }
    if (labelled.length > 0) {
      this.logger?.info("labelled for SELinux", { context: this.context, paths: labelled });
    }
    return undefined;
  }

  /** Sets the label where it differs; true if it did. An entry gone meanwhile is skipped. */
  private label(path: string): boolean {
    try {
      if (getLabel(path) === this.context) return false;
      setLabel(path, this.context);
      const now = getLabel(path);
      if (now !== this.context) {
        throw new Error(
          `${JSON.stringify(path)} reads back as ${now ?? "unlabelled"} after setting ${this.context}`,
        );
      }
      return true;
    } catch (error) {
      if (error instanceof XattrError && error.code === "ENOENT") return false;
      throw error;
    }
  }

  private problem(error: unknown): string {
    const cause = (error as Error).message;
    const readOnly = error instanceof XattrError && error.code === "EROFS";
    const fix = readOnly
      ? "mount the agent's directory read-write into the driver's container (SPIRE's Helm chart mounts it read-only)"
      : "run the driver as root in a privileged container, on a file system that stores SELinux labels";
    return `cannot label the Workload API socket directory ${JSON.stringify(this.socketDir)} for SELinux with ${this.context}: ${cause}; ${fix}, or label it on the node (chcon -h ${this.context} ${this.socketDir} ${this.socketDir}/*)`;
  }
}
