// The pod policy (--allow) as the deployments set it: kustomize's allow setting, and the Helm
// chart's allow value (and extraArgs) for nested SPIRE's upstream driver and for a multi-tenant cluster, read back
// from the rendered arguments as the driver reads them.
import { describe, expect, test } from "bun:test";
import { container, driverConfig, driverSets, renderChart, type Workload } from "./rules.ts";

const policyOf = (values: object) => {
  const set = driverSets(renderChart(values))[0] as Workload;
  return driverConfig(container(set.spec.template.spec, "spiffe-csi-driver")).policy;
};

describe("the Helm chart", () => {
  test("by default no rule: every pod", () => {
    expect(policyOf({}).enforcing).toBe(false);
  });

  test("nested SPIRE: the upstream driver admits only the SPIRE server's service account", () => {
    const policy = policyOf({
      pluginName: "upstream.csi.spiffe.io",
      agentSocketPath: "/run/spire/agent-sockets-upstream/spire-agent.sock",
      healthChecks: { port: 9810 },
      allow: ["spire-server/spire-server"],
    });
    expect(policy.describe()).toBe("spire-server/spire-server");
    const server = { name: "spire-server-0", uid: "u", serviceAccount: "spire-server" };
    expect(policy.decide({ ...server, namespace: "spire-server" })).toEqual({ allowed: true });
    expect(policy.decide({ ...server, namespace: "default" }).allowed).toBe(false);
    expect(
      policy.decide({ ...server, namespace: "spire-server", serviceAccount: "default" }).allowed,
    ).toBe(false);
  });

  test("multi-tenant: each item of allow is a rule, with wildcards", () => {
    const policy = policyOf({ allow: ["team-a", "team-b/payments", "*/monitoring"] });
    expect(policy.describe()).toBe("team-a/*, team-b/payments, */monitoring");
    expect(
      policy.decide({ name: "p", uid: "u", namespace: "team-c", serviceAccount: "monitoring" }),
    ).toEqual({
      allowed: true,
    });
  });

  test("allow refuses what is no rule (the schema)", () => {
    for (const rule of ["Team-A", "a/b/c", "", "a b"]) {
      expect(() => renderChart({ allow: [rule] })).toThrow();
    }
  });

  test("multi-tenant: repeated --allow in extraArgs, each a rule", () => {
    const policy = policyOf({ extraArgs: ["--allow=team-a", "--allow=team-b/payments"] });
    expect(policy.describe()).toBe("team-a/*, team-b/payments");
  });
});
