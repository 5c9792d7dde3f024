import { quote } from "./errors.ts";

/**
 * Which pods may have the Workload API on this node (--allow). The kubelet says which pod a
 * publish is for in volume_context, because the CSIDriver object sets podInfoOnMount; admission
 * control decides cluster-wide, this decides at the node, whoever created the pod.
 */

/** The volume_context keys the kubelet fills in with podInfoOnMount. */
export const POD_INFO_KEYS = {
  namespace: "csi.storage.k8s.io/pod.namespace",
  name: "csi.storage.k8s.io/pod.name",
  uid: "csi.storage.k8s.io/pod.uid",
  serviceAccount: "csi.storage.k8s.io/serviceAccount.name",
} as const;

/** Who a publish is for, as the kubelet said; a field is absent when it did not say. */
export type PodIdentity = Partial<Record<keyof typeof POD_INFO_KEYS, string>>;

export function podIdentity(volumeContext: Readonly<Record<string, string>>): PodIdentity {
  const pod: PodIdentity = {};
  for (const [field, key] of Object.entries(POD_INFO_KEYS)) {
    const value = volumeContext[key];
    if (value) pod[field as keyof PodIdentity] = value;
  }
  return pod;
}

/** One --allow rule; `*` stands for any namespace or any service account. */
export interface AllowRule {
  namespace: string;
  serviceAccount: string;
}

export const ANY = "*";

// Kubernetes names: a namespace is a DNS label (RFC 1123), a service account a DNS subdomain.
const DNS_LABEL = /^[a-z0-9](?:[-a-z0-9]*[a-z0-9])?$/;
const MAX_NAMESPACE = 63;
const MAX_SERVICE_ACCOUNT = 253;
// Rules named in a refusal; the rest are counted.
const MAX_RULES_NAMED = 8;

export function isNamespaceName(name: string): boolean {
  return name.length <= MAX_NAMESPACE && DNS_LABEL.test(name);
}

export function isServiceAccountName(name: string): boolean {
  return (
    name.length <= MAX_SERVICE_ACCOUNT &&
    name.split(".").every((label) => label.length <= MAX_NAMESPACE && DNS_LABEL.test(label))
  );
}

/** An --allow value that is not a rule: a setting error. */
export class AllowRuleError extends Error {
  override name = "AllowRuleError";
}

/** Why one segment of a rule is wrong, or undefined. */
function segmentProblem(
  segment: string,
  what: "namespace" | "service account",
): string | undefined {
  if (segment === ANY) return undefined;
  if (segment === "") return `the ${what} is empty`;
  if (segment.includes(ANY)) {
    return `"*" stands for a whole ${what}, not part of one (got ${quote(segment)})`;
  }
  const valid = what === "namespace" ? isNamespaceName(segment) : isServiceAccountName(segment);
  if (!valid) {
    return what === "namespace"
      ? `${quote(segment)} is not a namespace name (lower-case letters, digits and '-', at most ${MAX_NAMESPACE} characters, starting and ending with a letter or digit)`
      : `${quote(segment)} is not a service account name (lower-case letters, digits, '-' and '.', at most ${MAX_SERVICE_ACCOUNT} characters)`;
  }
  return undefined;
}

/** One rule, or why it is none. */
function parseRule(text: string): AllowRule | string {
  if (text === "") return "a rule is empty (one rule per value, or rules joined by single commas)";
  const segments = text.split("/");
  if (segments.length > 2) return "a rule is NAMESPACE or NAMESPACE/SERVICEACCOUNT, with one '/'";
  const [namespace = "", serviceAccount = ANY] = segments;
  return (
    segmentProblem(namespace, "namespace") ??
    segmentProblem(serviceAccount, "service account") ?? { namespace, serviceAccount }
  );
}

/** What the policy answers for one pod. */
export type Decision =
  | { allowed: true }
  | { allowed: false; reason: "no-pod-info" | "not-allowed"; message: string };

/** The rules in force: with none, every pod may have the volume (the default). */
export class PodPolicy {
  private constructor(readonly rules: readonly AllowRule[]) {}

  /**
   * The rules of --allow values, each one rule or several joined by commas (as a single value in
   * a manifest can hold them); AllowRuleError names a value that is not a rule.
   */
  static parse(values: readonly string[]): PodPolicy {
    const rules: AllowRule[] = [];
    const seen = new Set<string>();
    for (const value of values) {
      if (value === "") throw new AllowRuleError("--allow needs a rule, got an empty value");
      for (const text of value.split(",")) {
        const rule = parseRule(text);
        if (typeof rule === "string") throw new AllowRuleError(`--allow ${quote(value)}: ${rule}`);
        const key = formatRule(rule);
        if (!seen.has(key)) rules.push(rule);
        seen.add(key);
      }
    }
    return new PodPolicy(rules);
  }

  /** Whether any rule is in force: without one, every pod is admitted, with pod info or not. */
  get enforcing(): boolean {
    return this.rules.length > 0;
  }

  /** Whether both admit exactly the same pods by the same rules, in whatever order. */
  sameRules(other: PodPolicy): boolean {
    const rules = (policy: PodPolicy) => policy.rules.map(formatRule).sort().join(",");
    return rules(this) === rules(other);
  }

  /** The rules, for the log, the doctor and messages. */
  describe(): string {
    if (!this.enforcing) return "every pod (no --allow rule)";
    return this.rules.map(formatRule).join(", ");
  }

  decide(pod: PodIdentity): Decision {
    if (!this.enforcing) return { allowed: true };
    const missing = (Object.keys(POD_INFO_KEYS) as (keyof PodIdentity)[])
      .filter((field) => pod[field] === undefined)
      .map((field) => POD_INFO_KEYS[field]);
    if (missing.length > 0) {
      return {
        allowed: false,
        reason: "no-pod-info",
        message: `this driver admits pods by --allow rules, but the request does not say which pod it is for (volume_context lacks ${missing.join(", ")}): the CSIDriver object must set podInfoOnMount: true`,
      };
    }
    const { namespace = "", name = "", uid = "", serviceAccount = "" } = pod;
    if (this.rules.some((rule) => admits(rule, namespace, serviceAccount)))
      return { allowed: true };
    return {
      allowed: false,
      reason: "not-allowed",
      message: `pod ${quote(`${namespace}/${name}`)} (uid ${quote(uid)}, service account ${quote(serviceAccount)}) may not use the Workload API on this node: no --allow rule admits namespace ${quote(namespace)} with service account ${quote(serviceAccount)} (rules: ${this.namedRules()}); ${this.remedy(namespace, serviceAccount)}`,
    };
  }

  private namedRules(): string {
    const named = this.rules.slice(0, MAX_RULES_NAMED).map(formatRule).join(", ");
    const more = this.rules.length - MAX_RULES_NAMED;
    return more > 0 ? `${named} and ${more} more` : named;
  }

  /** The rule that would admit the pod, when its names can be written as one. */
  private remedy(namespace: string, serviceAccount: string): string {
    if (!isNamespaceName(namespace)) {
      return `no rule but "*" can admit it: ${quote(namespace)} is not a namespace name`;
    }
    if (!isServiceAccountName(serviceAccount)) {
      return `only --allow ${namespace} would admit it: ${quote(serviceAccount)} is not a service account name`;
    }
    return `--allow ${namespace}/${serviceAccount} would admit it`;
  }
}

function admits(rule: AllowRule, namespace: string, serviceAccount: string): boolean {
  return (
    (rule.namespace === ANY || rule.namespace === namespace) &&
    (rule.serviceAccount === ANY || rule.serviceAccount === serviceAccount)
  );
}

/** A rule as --allow spells it, with both segments: `team-a/*`. */
export function formatRule(rule: AllowRule): string {
  return `${rule.namespace}/${rule.serviceAccount}`;
}
