import { expect, test } from "bun:test";
import type { VolumeCounts } from "../../../src/csi/census.ts";
import { ABNORMAL_REASONS } from "../../../src/csi/stats.ts";
import { Metrics } from "../../../src/ops/metrics.ts";

const noVolumes = async (): Promise<VolumeCounts> => ({
  published: 0,
  abnormal: Object.fromEntries(
    ABNORMAL_REASONS.map((reason) => [reason, 0]),
  ) as VolumeCounts["abnormal"],
});

/** The refusal counter's samples, by namespace label. */
async function refusals(metrics: Metrics): Promise<Record<string, number>> {
  const metric = await metrics.registry.getSingleMetric("spiffe_csi_publish_refusals_total")?.get();
  return Object.fromEntries(
    (metric?.values ?? []).map((sample) => [String(sample.labels.namespace), sample.value]),
  );
}

test("refusals are counted by the pod's namespace", async () => {
  const metrics = new Metrics("test", noVolumes);
  metrics.publishRefused("team-b");
  metrics.publishRefused("team-b");
  metrics.publishRefused("default");
  expect(await refusals(metrics)).toEqual({ "team-b": 2, default: 1 });
});

test("the namespace label stays bounded: made-up names and names beyond 1,000 count as (other)", async () => {
  const metrics = new Metrics("test", noVolumes);
  for (let i = 0; i < 1_200; i++) metrics.publishRefused(`ns-${i}`);
  metrics.publishRefused('x" ERROR\n');
  metrics.publishRefused("Upper");
  // A namespace counted already keeps its own label.
  metrics.publishRefused("ns-0");
  // The kubelet named no namespace (no podInfoOnMount).
  metrics.publishRefused(undefined);
  const counted = await refusals(metrics);
  expect(Object.keys(counted)).toHaveLength(1_002);
  expect(counted["(other)"]).toBe(202);
  expect(counted["(none)"]).toBe(1);
  expect(counted["ns-0"]).toBe(2);
  expect(counted["ns-999"]).toBe(1);
  expect(counted["ns-1000"]).toBeUndefined();
});
