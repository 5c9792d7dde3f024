import { describe, expect, test } from "bun:test";
import {
  AllowRuleError,
  type Decision,
  type PodIdentity,
  PodPolicy,
  podIdentity,
} from "../../../src/csi/policy.ts";

const pod = (namespace: string, serviceAccount: string, name = "web-0"): PodIdentity => ({
  namespace,
  name,
  uid: "6f1d6a3e-93b2-4a1a-9d2c-0d9c5c1a2b3c",
  serviceAccount,
});

/** The message of a refusal; fails the test when `decision` admits the pod. */
function refusal(decision: Decision): string {
  expect(decision.allowed).toBe(false);
  if (decision.allowed) throw new Error("the pod was admitted");
  return decision.message;
}

describe("podIdentity", () => {
  test("reads the four keys the kubelet sends with podInfoOnMount", () => {
    expect(
      podIdentity({
        "csi.storage.k8s.io/pod.name": "web-0",
        "csi.storage.k8s.io/pod.namespace": "team-a",
        "csi.storage.k8s.io/pod.uid": "u-1",
        "csi.storage.k8s.io/serviceAccount.name": "web",
        "csi.storage.k8s.io/ephemeral": "true",
      }),
    ).toEqual({ name: "web-0", namespace: "team-a", uid: "u-1", serviceAccount: "web" });
  });

  test("an empty value is no value", () => {
    expect(
      podIdentity({ "csi.storage.k8s.io/pod.namespace": "", "csi.storage.k8s.io/pod.uid": "u" }),
    ).toEqual({ uid: "u" });
  });
});

describe("PodPolicy.parse", () => {
  test("no rule: every pod, even one the kubelet says nothing about", () => {
    const policy = PodPolicy.parse([]);
    expect(policy.enforcing).toBe(false);
    expect(policy.describe()).toBe("every pod (no --allow rule)");
    expect(policy.decide({})).toEqual({ allowed: true });
  });

  test("NAMESPACE means any service account; commas join rules; duplicates collapse", () => {
    const policy = PodPolicy.parse(["spire-server/spire-server", "team-a,team-b/*", "team-a/*"]);
    expect(policy.rules).toEqual([
      { namespace: "spire-server", serviceAccount: "spire-server" },
      { namespace: "team-a", serviceAccount: "*" },
      { namespace: "team-b", serviceAccount: "*" },
    ]);
    expect(policy.describe()).toBe("spire-server/spire-server, team-a/*, team-b/*");
  });

  test("service account names may hold dots", () => {
    expect(PodPolicy.parse(["ns/a.b-c"]).rules).toEqual([
      { namespace: "ns", serviceAccount: "a.b-c" },
    ]);
  });

  test.each([
    ["", "--allow needs a rule, got an empty value"],
    ["team-a,", '--allow "team-a,": a rule is empty (one rule per value, or rules joined by'],
    ["team-a,,team-b", '--allow "team-a,,team-b": a rule is empty'],
    ["team-a,Team-B", '--allow "team-a,Team-B": "Team-B" is not a namespace name'],
    ["/web", '--allow "/web": the namespace is empty'],
    ["team-a/", '--allow "team-a/": the service account is empty'],
    ["a/b/c", "a rule is NAMESPACE or NAMESPACE/SERVICEACCOUNT, with one '/'"],
    ["team-*", '"*" stands for a whole namespace, not part of one (got "team-*")'],
    ["ns/web*", '"*" stands for a whole service account, not part of one (got "web*")'],
    ["**", '"*" stands for a whole namespace'],
    ["Team-A", '"Team-A" is not a namespace name'],
    ["-team", '"-team" is not a namespace name'],
    ["team.a", '"team.a" is not a namespace name'],
    [`${"a".repeat(64)}`, "is not a namespace name"],
    ["ns/Web", '"Web" is not a service account name'],
    ["ns/a..b", '"a..b" is not a service account name'],
    [" ns", '" ns" is not a namespace name'],
    ["ns\n", '"ns\\n" is not a namespace name'],
  ])("refuses %p", (value, message) => {
    expect(() => PodPolicy.parse([value])).toThrow(AllowRuleError);
    expect(() => PodPolicy.parse([value])).toThrow(message);
  });

  test("the longest names are rules", () => {
    const namespace = "a".repeat(63);
    const serviceAccount = `${"b".repeat(63)}.${"c".repeat(63)}.${"d".repeat(63)}.${"e".repeat(61)}`;
    expect(serviceAccount).toHaveLength(253);
    expect(PodPolicy.parse([`${namespace}/${serviceAccount}`]).rules).toHaveLength(1);
    expect(() => PodPolicy.parse([`${namespace}/${serviceAccount}x`])).toThrow(AllowRuleError);
  });
});

describe("PodPolicy.decide", () => {
  test("a namespace rule admits every service account of that namespace, and only there", () => {
    const policy = PodPolicy.parse(["team-a"]);
    expect(policy.decide(pod("team-a", "web"))).toEqual({ allowed: true });
    expect(policy.decide(pod("team-a", "default"))).toEqual({ allowed: true });
    expect(policy.decide(pod("team-b", "web")).allowed).toBe(false);
    // No prefix matching.
    expect(policy.decide(pod("team-ab", "web")).allowed).toBe(false);
  });

  test("NAMESPACE/SERVICEACCOUNT admits that pair only", () => {
    const policy = PodPolicy.parse(["spire-server/spire-server"]);
    expect(policy.decide(pod("spire-server", "spire-server"))).toEqual({ allowed: true });
    expect(policy.decide(pod("spire-server", "default")).allowed).toBe(false);
    expect(policy.decide(pod("default", "spire-server")).allowed).toBe(false);
  });

  test("*/SERVICEACCOUNT admits that service account name in every namespace", () => {
    const policy = PodPolicy.parse(["*/spiffe-workload"]);
    expect(policy.decide(pod("a", "spiffe-workload"))).toEqual({ allowed: true });
    expect(policy.decide(pod("b", "spiffe-workload"))).toEqual({ allowed: true });
    expect(policy.decide(pod("a", "default")).allowed).toBe(false);
  });

  test("* admits every pod the kubelet names, and still requires the pod's identity", () => {
    const policy = PodPolicy.parse(["*"]);
    expect(policy.decide(pod("any", "thing"))).toEqual({ allowed: true });
    expect(policy.decide({})).toMatchObject({ allowed: false, reason: "no-pod-info" });
  });

  test("a refusal names the pod, the rules in force and the rule that would admit it", () => {
    const decision = PodPolicy.parse(["spire-server/spire-server", "team-b"]).decide(
      pod("team-a", "web", "web-0"),
    );
    expect(decision).toEqual({
      allowed: false,
      reason: "not-allowed",
      message:
        'pod "team-a/web-0" (uid "6f1d6a3e-93b2-4a1a-9d2c-0d9c5c1a2b3c", service account "web") may not use the Workload API on this node: no --allow rule admits namespace "team-a" with service account "web" (rules: spire-server/spire-server, team-b/*); --allow team-a/web would admit it',
    });
  });

  test("a refusal names at most 8 rules and counts the rest", () => {
    const policy = PodPolicy.parse(Array.from({ length: 20 }, (_, i) => `ns-${i}`));
    const message = refusal(policy.decide(pod("team-a", "web")));
    expect(message).toContain("ns-7/* and 12 more)");
    expect(message).not.toContain("ns-8/");
  });

  test("names that are no Kubernetes names are quoted, and no rule is suggested for them", () => {
    const hostile = pod('x" ERROR forged\n', "web");
    const message = refusal(PodPolicy.parse(["team-a"]).decide(hostile));
    expect(message).toContain('pod "x\\" ERROR forged\\n/web-0"');
    expect(message).toContain(
      'no rule but "*" can admit it: "x\\" ERROR forged\\n" is not a namespace name',
    );
    expect(message).not.toContain("\n");
    const badAccount = refusal(PodPolicy.parse(["team-b"]).decide(pod("team-a", "Web!")));
    expect(badAccount).toContain(
      'only --allow team-a would admit it: "Web!" is not a service account name',
    );
  });

  test("without the pod's identity: refused, naming the keys missing and the fix", () => {
    const decision = PodPolicy.parse(["team-a"]).decide({ uid: "u-1" });
    expect(decision).toEqual({
      allowed: false,
      reason: "no-pod-info",
      message:
        "this driver admits pods by --allow rules, but the request does not say which pod it is for (volume_context lacks csi.storage.k8s.io/pod.namespace, csi.storage.k8s.io/pod.name, csi.storage.k8s.io/serviceAccount.name): the CSIDriver object must set podInfoOnMount: true",
    });
  });

  test("matching is exact: case and surrounding text count", () => {
    const policy = PodPolicy.parse(["team-a/web"]);
    expect(policy.decide(pod("Team-A", "web")).allowed).toBe(false);
    expect(policy.decide(pod("team-a", "web ")).allowed).toBe(false);
    expect(policy.decide(pod("team-a", "*")).allowed).toBe(false);
    expect(policy.decide(pod("*", "web")).allowed).toBe(false);
  });
});
