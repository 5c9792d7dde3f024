import { describe, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { parseMountInfo } from "../../src/linux/mountinfo.ts";
import { entangled, mountTree } from "../../src/linux/submounts.ts";

const sample = readFileSync(join(import.meta.dir, "../fixtures/mountinfo"), "utf8");

test("parses every well-formed line and skips the rest", () => {
  const mounts = parseMountInfo(sample);
  expect(mounts.map((mount) => mount.mountId)).toEqual([22, 23, 24, 25, 310, 311, 312]);
});

test("reads ids, device, root, mount point, propagation, type and source", () => {
  const bind = parseMountInfo(sample).find((mount) => mount.mountId === 310);
  expect(bind).toEqual({
    mountId: 310,
    parentId: 24,
    device: "0:22",
    root: "/spire/agent-sockets",
    mountPoint:
      "/var/lib/kubelet/pods/6f1d6a3e-93b2-4a1a-9d2c-0d9c5c1a2b3c/volumes/kubernetes.io~csi/spiffe-workload-api/mount",
    propagation: ["shared:5"],
    fsType: "tmpfs",
    source: "tmpfs",
    readOnly: false,
  });
  expect(parseMountInfo(sample).find((mount) => mount.mountId === 25)?.propagation).toEqual([]);
});

test("undoes octal escapes in paths", () => {
  const mounts = parseMountInfo(sample);
  expect(mounts.find((mount) => mount.mountId === 311)?.mountPoint).toEndWith(
    "kubernetes.io~csi/spiffe api/mount",
  );
  const escaped = mounts.find((mount) => mount.mountId === 312);
  expect(escaped?.root).toBe("/data\ttab");
  expect(escaped?.mountPoint).toBe("/mnt/with\\backslash\nnewline");
});

test("reads read-only from the mount's flags or its file system's", () => {
  const [own, superblock, writable] = parseMountInfo(
    [
      "40 22 0:50 / /run/a/fs ro,relatime shared:7 - fuse spiffefs rw",
      "41 22 0:51 / /run/a/sb rw,relatime - tmpfs tmpfs ro,size=4k",
      "42 22 0:52 / /run/a/rw rw,relatime - tmpfs tmpfs rw,rootcontext=x",
    ].join("\n"),
  );
  expect([own?.readOnly, superblock?.readOnly, writable?.readOnly]).toEqual([true, true, false]);
});

describe("mountTree", () => {
  // The agent's directory /run/agent on / (shared:1), SPIFFEFS below it (read-only), a
  // read-write tmpfs below that, a mount on a sibling directory, and one stacked on the
  // directory itself.
  const table = parseMountInfo(
    [
      "22 1 254:0 / / rw shared:1 - ext4 /dev/vda rw",
      "30 22 0:40 / /run/agent/spiffefs ro master:3 - fuse spiffefs rw",
      "31 30 0:41 / /run/agent/spiffefs/tmp rw shared:4 - tmpfs tmpfs rw",
      "32 22 0:42 / /run/agent-other rw shared:5 - tmpfs tmpfs rw",
      "33 22 0:43 / /run/agent rw shared:6 - tmpfs tmpfs rw",
    ].join("\n"),
  );

  test("finds the mounts below the directory, their peer groups and the writable ones", () => {
    const tree = mountTree(table, 22, "/run/agent");
    expect(tree.writable).toEqual(["/run/agent/spiffefs/tmp"]);
    expect(tree.peerGroups.sort()).toEqual(["shared:1", "shared:4"]);
  });

  test("a slave tree shares no group with its masters' trees", () => {
    const slave = mountTree(table, 30, "/run/agent/spiffefs");
    expect(slave.peerGroups).toEqual(["shared:4"]);
    expect(entangled(slave, mountTree(table, 32, "/run/agent-other"))).toBe(false);
    expect(entangled(slave, mountTree(table, 22, "/run/agent"))).toBe(true);
  });
});
