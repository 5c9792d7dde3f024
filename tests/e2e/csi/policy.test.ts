// Who gets the Workload API: --allow rules enforced by the real binary on the exact requests the
// kubelet sends, the audit line of every publish and unpublish in both log formats, and the
// refusal counter.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { existsSync, readdirSync } from "node:fs";
import { join } from "node:path";
import { status } from "@grpc/grpc-js";
import { talkToAgent } from "../../helpers/agent.ts";
import { clients, type DriverProcess, spawnDriver, startDriver } from "../../helpers/driver.ts";
import {
  mountsAt,
  type PodVolume,
  podVolume,
  preparedVolume,
  publishRequest,
  removeVolume,
  unpublishRequest,
} from "../../helpers/kubelet.ts";
import { rawControl } from "../../helpers/logs.ts";
import { freePort } from "../../helpers/port.ts";
import { rpcFailure } from "../../helpers/rpc.ts";
import { mountTestbed } from "../../helpers/testbed.ts";
import { waitFor } from "../../helpers/wait.ts";

const bed = mountTestbed("policy");

interface Pod {
  namespace: string;
  name: string;
  serviceAccount: string;
}

/** The kubelet's publish for `pod`: its identity where podInfoOnMount puts it. */
function publishFor(volume: PodVolume, pod: Pod) {
  const request = publishRequest(volume);
  request.volumeContext["csi.storage.k8s.io/pod.namespace"] = pod.namespace;
  request.volumeContext["csi.storage.k8s.io/pod.name"] = pod.name;
  request.volumeContext["csi.storage.k8s.io/serviceAccount.name"] = pod.serviceAccount;
  return request;
}

/** A publish from a kubelet whose CSIDriver object lacks podInfoOnMount. */
function publishWithoutPodInfo(volume: PodVolume) {
  const request = publishRequest(volume);
  for (const key of Object.keys(request.volumeContext)) {
    if (key !== "csi.storage.k8s.io/ephemeral") delete request.volumeContext[key];
  }
  return request;
}

/** A pod volume, prepared, below a kubelet root of its own. */
const volumeIn = (name: string): PodVolume => preparedVolume(join(bed.root, name));

/** The audit lines a driver logged in JSON, parsed. */
function auditRecords(driver: DriverProcess): Record<string, unknown>[] {
  return driver.stderr
    .split("\n")
    .filter((line) => line.startsWith("{"))
    .map((line) => JSON.parse(line) as Record<string, unknown>)
    .filter((record) => record.msg === "audit");
}

async function auditOf(
  driver: DriverProcess,
  operation: string,
  volume: PodVolume,
): Promise<Record<string, unknown>> {
  return waitFor(`an audit line for ${operation} of ${volume.volumeId}`, () =>
    auditRecords(driver).find(
      (record) => record.operation === operation && record.volume_id === volume.volumeId,
    ),
  );
}

/** The volume directory holds nothing but the kubelet's record: no target was created. */
function untouched(volume: PodVolume): void {
  expect(existsSync(volume.targetPath)).toBe(false);
  expect(readdirSync(volume.volumeDir)).toEqual(["vol_data.json"]);
  expect(mountsAt(volume.targetPath)).toBe(0);
}

describe("with --allow rules", () => {
  const csiSocketPath = join(bed.root, "enforcing", "csi.sock");
  const healthPort = freePort();
  const { node, identity } = clients(csiSocketPath);
  let driver: DriverProcess;

  beforeAll(async () => {
    driver = await startDriver({
      workloadApiSocketDir: bed.socketDir,
      csiSocketPath,
      // Every spelling the other flags accept, repeated.
      args: [
        "-allow",
        "spire-server/spire-server",
        "--allow=team-a",
        "-allow=*/spiffe-workload",
        "--allow",
        "team-c/*,team-d/reader",
        "--log-format",
        "json",
        "--health-addr",
        `127.0.0.1:${healthPort}`,
      ],
    });
  }, 120_000);

  afterAll(async () => {
    const { code, stderr } = await driver.stop();
    expect(code).toBe(0);
    expect(stderr).not.toContain('"code":"INTERNAL"');
  }, 120_000);

  test("logs the rules in force at start", async () => {
    const started = await waitFor("the policy line", () =>
      driver.stderr
        .split("\n")
        .filter((line) => line.startsWith("{"))
        .map((line) => JSON.parse(line))
        .find((record) => record.msg === "pod policy"),
    );
    expect(started.allow).toBe(
      "spire-server/spire-server, team-a/*, */spiffe-workload, team-c/*, team-d/reader",
    );
  });

  test("GetPluginInfo's manifest holds the rules in force (the doctor reads them)", async () => {
    expect((await identity.getPluginInfo({})).manifest).toEqual({
      allow: "spire-server/spire-server,team-a/*,*/spiffe-workload,team-c/*,team-d/reader",
    });
  });

  test.each([
    ["NAMESPACE/SERVICEACCOUNT", { namespace: "spire-server", serviceAccount: "spire-server" }],
    ["NAMESPACE (any service account)", { namespace: "team-a", serviceAccount: "builder" }],
    [
      "*/SERVICEACCOUNT (any namespace)",
      { namespace: "team-z", serviceAccount: "spiffe-workload" },
    ],
    ["NAMESPACE/* (any service account)", { namespace: "team-c", serviceAccount: "default" }],
    ["a second rule of a comma list", { namespace: "team-d", serviceAccount: "reader" }],
  ])("admits a pod by %s, and audits publish and unpublish", async (_, identity) => {
    const volume = volumeIn("allowed");
    const pod = { ...identity, name: `pod-${volume.podUid.slice(0, 8)}` };
    await node.nodePublishVolume(publishFor(volume, pod));
    expect(mountsAt(volume.targetPath)).toBe(1);
    expect(await talkToAgent(volume.targetPath)).toBe("pong ping");
    expect(await auditOf(driver, "publish", volume)).toEqual({
      time: expect.any(String),
      level: "info",
      msg: "audit",
      operation: "publish",
      outcome: "granted",
      code: "OK",
      volume_id: volume.volumeId,
      pod_namespace: pod.namespace,
      pod_name: pod.name,
      pod_uid: volume.podUid,
      service_account: pod.serviceAccount,
    });
    await node.nodeUnpublishVolume(unpublishRequest(volume));
    expect(mountsAt(volume.targetPath)).toBe(0);
    // The kubelet sends no pod information with an unpublish: the uid is the target path's.
    expect(await auditOf(driver, "unpublish", volume)).toEqual({
      time: expect.any(String),
      level: "info",
      msg: "audit",
      operation: "unpublish",
      outcome: "removed",
      code: "OK",
      volume_id: volume.volumeId,
      pod_uid: volume.podUid,
    });
    removeVolume(volume);
  });

  test.each([
    [
      "a namespace no rule names",
      { namespace: "team-b", serviceAccount: "web" },
      "--allow team-b/web would admit it",
    ],
    [
      "another service account of a NAMESPACE/SERVICEACCOUNT rule's namespace",
      { namespace: "spire-server", serviceAccount: "default" },
      "--allow spire-server/default would admit it",
    ],
    [
      "a namespace whose name only starts like an allowed one",
      { namespace: "team-ab", serviceAccount: "spiffe" },
      "--allow team-ab/spiffe would admit it",
    ],
    [
      "a service account like */SERVICEACCOUNT's in case only",
      { namespace: "team-b", serviceAccount: "Spiffe-Workload" },
      'only --allow team-b would admit it: "Spiffe-Workload" is not a service account name',
    ],
  ])(
    "refuses %s: PERMISSION_DENIED naming the pod; nothing mounted or created",
    async (_, identity, remedy) => {
      const volume = volumeIn("refused");
      const pod = { ...identity, name: "web-0" };
      const error = await rpcFailure(node.nodePublishVolume(publishFor(volume, pod)));
      expect(error.code).toBe(status.PERMISSION_DENIED);
      expect(error.details).toBe(
        `pod "${pod.namespace}/web-0" (uid "${volume.podUid}", service account "${pod.serviceAccount}") may not use the Workload API on this node: no --allow rule admits namespace "${pod.namespace}" with service account "${pod.serviceAccount}" (rules: spire-server/spire-server, team-a/*, */spiffe-workload, team-c/*, team-d/reader); ${remedy}`,
      );
      untouched(volume);
      expect(await auditOf(driver, "publish", volume)).toMatchObject({
        level: "info",
        outcome: "refused",
        code: "PERMISSION_DENIED",
        pod_namespace: pod.namespace,
        pod_name: "web-0",
        pod_uid: volume.podUid,
        service_account: pod.serviceAccount,
      });
      // The kubelet retries a final error: the retry is refused the same way.
      const again = await rpcFailure(node.nodePublishVolume(publishFor(volume, pod)));
      expect(again.details).toBe(error.details);
      untouched(volume);
      // After a final error the kubelet unpublishes, which must succeed.
      await node.nodeUnpublishVolume(unpublishRequest(volume));
      removeVolume(volume);
    },
  );

  test("counts refusals by namespace", async () => {
    const metrics = await (await fetch(`http://127.0.0.1:${healthPort}/metrics`)).text();
    expect(metrics).toContain("# TYPE spiffe_csi_publish_refusals_total counter");
    // Two refusals (a retry each) per refused pod of the test above.
    expect(metrics).toMatch(/^spiffe_csi_publish_refusals_total\{namespace="team-b"\} 4$/m);
    expect(metrics).toMatch(/^spiffe_csi_publish_refusals_total\{namespace="spire-server"\} 2$/m);
    expect(metrics).toMatch(/^spiffe_csi_publish_refusals_total\{namespace="team-ab"\} 2$/m);
    // Admitted namespaces are not counted.
    expect(metrics).not.toContain('namespace="team-a"');
  });

  test("without the pod's identity (no podInfoOnMount): FAILED_PRECONDITION saying so", async () => {
    const volume = volumeIn("no-pod-info");
    const error = await rpcFailure(node.nodePublishVolume(publishWithoutPodInfo(volume)));
    expect(error.code).toBe(status.FAILED_PRECONDITION);
    expect(error.details).toBe(
      "this driver admits pods by --allow rules, but the request does not say which pod it is for (volume_context lacks csi.storage.k8s.io/pod.namespace, csi.storage.k8s.io/pod.name, csi.storage.k8s.io/pod.uid, csi.storage.k8s.io/serviceAccount.name): the CSIDriver object must set podInfoOnMount: true",
    );
    untouched(volume);
    // The uid still comes from the target path.
    expect(await auditOf(driver, "publish", volume)).toMatchObject({
      outcome: "refused",
      code: "FAILED_PRECONDITION",
      pod_uid: volume.podUid,
    });
    removeVolume(volume);
  });

  test("a pod uid that is not the target path's is INVALID_ARGUMENT, even for an allowed pod", async () => {
    const volume = volumeIn("mismatch");
    const other = podVolume(bed.root).podUid;
    const request = publishFor(volume, {
      namespace: "team-a",
      name: "web-0",
      serviceAccount: "web",
    });
    request.volumeContext["csi.storage.k8s.io/pod.uid"] = other;
    const error = await rpcFailure(node.nodePublishVolume(request));
    expect(error.code).toBe(status.INVALID_ARGUMENT);
    expect(error.details).toBe(
      `volume_context csi.storage.k8s.io/pod.uid "${other}" is not the pod uid in target_path ("${volume.podUid}")`,
    );
    untouched(volume);
    expect(await auditOf(driver, "publish", volume)).toMatchObject({
      outcome: "failed",
      code: "INVALID_ARGUMENT",
      pod_uid: other,
    });
    removeVolume(volume);
  });
});

describe("without --allow rules", () => {
  const csiSocketPath = join(bed.root, "open", "csi.sock");
  const { node, identity } = clients(csiSocketPath);
  let driver: DriverProcess;

  beforeAll(async () => {
    driver = await startDriver({ workloadApiSocketDir: bed.socketDir, csiSocketPath });
  }, 120_000);

  afterAll(async () => {
    expect((await driver.stop()).code).toBe(0);
  }, 120_000);

  test("GetPluginInfo's manifest says no rule is in force", async () => {
    expect((await identity.getPluginInfo({})).manifest).toEqual({ allow: "" });
  });

  test("every pod is admitted, with pod information or without", async () => {
    const volume = volumeIn("open");
    await node.nodePublishVolume(
      publishFor(volume, { namespace: "anywhere", name: "any-0", serviceAccount: "any" }),
    );
    expect(mountsAt(volume.targetPath)).toBe(1);
    await node.nodeUnpublishVolume(unpublishRequest(volume));
    await node.nodePublishVolume(publishWithoutPodInfo(volume));
    expect(mountsAt(volume.targetPath)).toBe(1);
    await node.nodeUnpublishVolume(unpublishRequest(volume));
    removeVolume(volume);
  });

  test("the text audit line carries the pod's identity", async () => {
    const volume = volumeIn("text");
    await node.nodePublishVolume(
      publishFor(volume, { namespace: "team-a", name: "web-0", serviceAccount: "web" }),
    );
    await node.nodeUnpublishVolume(unpublishRequest(volume));
    const lines = () => driver.stderr.split("\n");
    const publishLine = await waitFor("the publish audit line", () =>
      lines().find(
        (line) => line.includes(" audit operation=publish ") && line.includes(volume.volumeId),
      ),
    );
    expect(publishLine).toMatch(
      new RegExp(
        `^\\S+Z INFO  audit operation=publish outcome=granted code=OK volume_id=${volume.volumeId} pod_namespace=team-a pod_name=web-0 pod_uid=${volume.podUid} service_account=web$`,
      ),
    );
    const unpublishLine = await waitFor("the unpublish audit line", () =>
      lines().find(
        (line) => line.includes(" audit operation=unpublish ") && line.includes(volume.volumeId),
      ),
    );
    expect(unpublishLine).toMatch(
      new RegExp(
        `^\\S+Z INFO  audit operation=unpublish outcome=removed code=OK volume_id=${volume.volumeId} pod_uid=${volume.podUid}$`,
      ),
    );
    removeVolume(volume);
  });

  test("a mismatched pod uid is INVALID_ARGUMENT without rules too", async () => {
    const volume = volumeIn("mismatch-open");
    const request = publishRequest(volume);
    request.volumeContext["csi.storage.k8s.io/pod.uid"] = "not-the-uid";
    const error = await rpcFailure(node.nodePublishVolume(request));
    expect(error.code).toBe(status.INVALID_ARGUMENT);
    untouched(volume);
    removeVolume(volume);
  });
});

describe("rules tightened while a pod runs", () => {
  test("its volume stays; the re-publish is refused; its unpublish removes it", async () => {
    const csiSocketPath = join(bed.root, "tightened", "csi.sock");
    const { node } = clients(csiSocketPath);
    const volume = volumeIn("tightened");
    const pod = { namespace: "team-b", name: "web-0", serviceAccount: "web" };
    const open = await startDriver({ workloadApiSocketDir: bed.socketDir, csiSocketPath });
    await node.nodePublishVolume(publishFor(volume, pod));
    expect((await open.stop()).code).toBe(0);
    const strict = await startDriver({
      workloadApiSocketDir: bed.socketDir,
      csiSocketPath,
      args: ["--allow", "team-a"],
    });
    const error = await rpcFailure(node.nodePublishVolume(publishFor(volume, pod)));
    expect(error.code).toBe(status.PERMISSION_DENIED);
    expect(mountsAt(volume.targetPath)).toBe(1);
    expect(await talkToAgent(volume.targetPath)).toBe("pong ping");
    await node.nodeUnpublishVolume(unpublishRequest(volume));
    expect(mountsAt(volume.targetPath)).toBe(0);
    expect(existsSync(volume.targetPath)).toBe(false);
    expect((await strict.stop()).code).toBe(0);
    removeVolume(volume);
  });
});

// A fake ERROR line after a cleared terminal line, a window title, a bell, NUL, DEL, C1 controls
// and the Unicode line separators, in every field of the pod's identity.
const FORGED =
  'x" level=error\r\x1b[2K2024-01-01T00:00:00.000Z ERROR forged\n\x1b]0;t\x07\0\x7f\u0085\u2028';

describe.each(["text", "json"] as const)("hostile pod names, %s logs", (format) => {
  test("every audit field is escaped: one line, no control character, the same strings back", async () => {
    const csiSocketPath = join(bed.root, `hostile-${format}`, "csi.sock");
    const driver = await startDriver({
      workloadApiSocketDir: bed.socketDir,
      csiSocketPath,
      args: ["--log-format", format, "--allow", "team-a"],
    });
    const { node } = clients(csiSocketPath);
    const volume = volumeIn(`hostile-${format}`);
    const pod = { namespace: FORGED, name: FORGED, serviceAccount: FORGED };
    const error = await rpcFailure(node.nodePublishVolume(publishFor(volume, pod)));
    expect(error.code).toBe(status.PERMISSION_DENIED);
    untouched(volume);
    const { stderr } = await driver.stop();
    const lines = stderr.split("\n").slice(0, -1);
    for (const line of lines) expect(rawControl(line)).toBeUndefined();
    const audit = lines.filter((line) => line.includes("audit"));
    expect(audit).toHaveLength(1);
    // Only the audit line and the failed call's line mention the pod.
    expect(lines.filter((line) => line.includes("forged"))).toHaveLength(2);
    const line = audit[0] ?? "";
    if (format === "json") {
      expect(JSON.parse(line)).toMatchObject({
        msg: "audit",
        outcome: "refused",
        pod_namespace: FORGED,
        pod_name: FORGED,
        service_account: FORGED,
      });
    } else {
      const escaped = String.raw`"x\" level=error\x0d\x1b[2K2024-01-01T00:00:00.000Z ERROR forged\x0a\x1b]0;t\x07\x00\x7f\x85\u{2028}"`;
      expect(line).toContain(` pod_namespace=${escaped} pod_name=${escaped} `);
      expect(line).toContain(` service_account=${escaped}`);
    }
    removeVolume(volume);
  });
});

describe("rules that are not rules", () => {
  test.each([
    [["--allow", "Team-A"], '--allow "Team-A": "Team-A" is not a namespace name'],
    [["-allow=team-*"], '--allow "team-*": "*" stands for a whole namespace, not part of one'],
    [["--allow", "a/b/c"], "a rule is NAMESPACE or NAMESPACE/SERVICEACCOUNT, with one '/'"],
    [["--allow", "team-a,"], '--allow "team-a,": a rule is empty'],
    [["--allow="], "--allow needs a value"],
    [["--allow", "team-a", "--allow"], "--allow needs a value"],
    [["--no-allow"], "--allow needs a value"],
    [["-allow", "--log-level"], '--allow "--log-level": "--log-level" is not a namespace name'],
  ])("%p: exit 2, one line, no socket", async (args, message) => {
    const csiSocketPath = join(bed.root, "bad-rules", "csi.sock");
    const driver = spawnDriver(
      ["-workload-api-socket-dir", bed.socketDir, "-csi-socket-path", csiSocketPath, ...args],
      { MY_NODE_NAME: "node-1" },
    );
    const { code, stderr } = await driver.exited();
    expect(code).toBe(2);
    expect(stderr.split("\n").filter(Boolean)).toHaveLength(1);
    expect(stderr).toStartWith("spiffe-csi-driver: ");
    expect(stderr).toContain(message);
    expect(existsSync(csiSocketPath)).toBe(false);
  });
});
