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

/** Why `context` is not a file context (user:role:type:level), or undefined when it is. */
export function contextProblem(context: string): string | undefined {
  return CONTEXT.test(context)
    ? undefined
    : `--selinux-context must be user:role:type:level (e.g. ${DEFAULT_SELINUX_CONTEXT}), got ${JSON.stringify(context)}`;
}

/** The type and level of a context; undefined when it is not user:role:type:level. */
export function contextParts(context: string): { type: string; level: string } | undefined {
  const match = CONTEXT.exec(context);
  return match ? { type: match[3] as string, level: match[4] as string } : undefined;
}

/**
 * Whether a file labelled `label` is usable by every container, the one rule the driver and the
 * doctor share: the configured context's type and level (`s0` by default: a level with
 * categories admits only pods holding them). User and role do not matter to the targeted
 * policy: `unconfined_u:object_r:container_file_t:s0`, which `chcon -t` leaves, is as good as
 * `system_u:object_r:container_file_t:s0`.
 */
export function usableByContainers(label: string | undefined, context: string): boolean {
  const file = label === undefined ? undefined : contextParts(label);
  const wanted = contextParts(context);
  return file !== undefined && file.type === wanted?.type && file.level === wanted.level;
}
