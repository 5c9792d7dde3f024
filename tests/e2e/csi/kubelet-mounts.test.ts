// A file system that stops answering, mounted in the kubelet's directories (a privileged pod's
// FUSE server over its own pod directory, or a request that names a kubelet root inside one):
// the walk to the volume directory judges each mount before it looks up a name in it, so the
// call is answered at once, and the driver goes on serving other pods.
import { describe, expect, test } from "bun:test";
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { status } from "@grpc/grpc-js";
import { clients } from "../../helpers/driver.ts";
import { failsWithin, foreignMountsBed } from "../../helpers/foreign-mounts.ts";
import {
  mountsAt,
  podVolume,
  preparedVolume,
  publishRequest,
  statsRequest,
  unpublishRequest,
} from "../../helpers/kubelet.ts";

// A bound for a loaded machine, not a figure: without the gate the call never ends.
const WITHIN_MS = 10_000;

const bed = foreignMountsBed("kubelet-mounts");
const { root, kubeletRoot } = bed;

/** `call`'s failure; fails the test beyond WITHIN_MS. */
const answered = (call: Promise<unknown>) => failsWithin(WITHIN_MS, call);

describe("a silent FUSE file system in the kubelet's directories", () => {
  test("over a pod's directory: its calls are UNAVAILABLE at once, naming the mount; other pods are served", async () => {
    const { csiSocketPath } = await bed.startDriver("pod-dir");
    const { node } = clients(csiSocketPath);
    const hidden = podVolume(kubeletRoot);
    const podDir = join(kubeletRoot, "pods", hidden.podUid);
    mkdirSync(podDir, { recursive: true });
    await bed.silentFuse(podDir);

    for (const call of [
      node.nodePublishVolume(publishRequest(hidden)),
      node.nodeUnpublishVolume(unpublishRequest(hidden)),
      node.nodeGetVolumeStats(statsRequest(hidden)),
    ]) {
      const failure = await answered(call);
      expect(failure.code).toBe(status.UNAVAILABLE);
      expect(failure.details).toContain(`${podDir} is on a fuse mount`);
    }

    const other = preparedVolume(kubeletRoot);
    await node.nodePublishVolume(publishRequest(other));
    expect(mountsAt(other.targetPath)).toBe(1);
    await node.nodeUnpublishVolume(unpublishRequest(other));
    expect(mountsAt(other.targetPath)).toBe(0);
    node.close();
  }, 60_000);

  test("a request whose kubelet root is one: UNAVAILABLE at once", async () => {
    const { csiSocketPath } = await bed.startDriver("root-dir");
    const { node } = clients(csiSocketPath);
    const fuseRoot = join(root, "fuse-kubelet");
    mkdirSync(fuseRoot);
    await bed.silentFuse(fuseRoot);
    const failure = await answered(node.nodePublishVolume(publishRequest(podVolume(fuseRoot))));
    expect(failure.code).toBe(status.UNAVAILABLE);
    expect(failure.details).toContain(`${fuseRoot} is on a fuse mount`);
    node.close();
  }, 60_000);
});
