import { closeSync, constants, openSync, readSync } from "node:fs";
import type { SelinuxLabelMode } from "./context.ts";

// A process's context as /proc/self/attr/current gives it; policies without MLS have no level.
// Another security module's label there ("unconfined", "profile (enforce)") never has this form.
const PROCESS_CONTEXT = /^[^:\s]+:[^:\s]+:[^:\s]+(?::\S+)?$/;

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
