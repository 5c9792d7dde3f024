import { expect, test } from "bun:test";
import type { VolumeCounts } from "../../../src/csi/census.ts";
import { ABNORMAL_REASONS } from "../../../src/csi/stats.ts";
import { Node } from "../../../src/gen/csi/v1/csi_pb.ts";
import { Metrics } from "../../../src/ops/metrics.ts";

const noVolumes = async (): Promise<VolumeCounts> => ({
  published: 0,
  abnormal: Object.fromEntries(
    ABNORMAL_REASONS.map((reason) => [reason, 0]),
  ) as VolumeCounts["abnormal"],
});

/** The refusal counter's samples, by namespace label. */
async function refusals(metrics: Metrics): Promise<Record<string, number>> {
  const registry = await metrics.registry();
  const metric = await registry.getSingleMetric("spiffe_csi_publish_refusals_total")?.get();
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

test("what is recorded before prom-client has loaded is counted once it has, and after", async () => {
  const metrics = new Metrics("test", noVolumes);
  const publish = Node.methods.find((method) => method.name === "NodePublishVolume");
  if (!publish) throw new Error("no NodePublishVolume in the CSI descriptor");
  metrics.callStarted(publish);
  metrics.observeCall({ method: publish, code: 9, details: "refused", durationMs: 2 });
  metrics.mountFailed("mount");
  const labels = 'grpc_type="unary",grpc_service="csi.v1.Node",grpc_method="NodePublishVolume"';
  const first = await metrics.text();
  expect(first).toContain(`grpc_server_started_total{${labels}} 1\n`);
  expect(first).toContain(
    `grpc_server_handled_total{${labels},grpc_code="FailedPrecondition"} 1\n`,
  );
  expect(first).toContain(`grpc_server_handling_seconds_count{${labels}} 1\n`);
  expect(first).toContain('spiffe_csi_mount_failures_total{operation="mount"} 1\n');
  metrics.mountFailed("mount");
  expect(await metrics.text()).toContain('spiffe_csi_mount_failures_total{operation="mount"} 2\n');
});
