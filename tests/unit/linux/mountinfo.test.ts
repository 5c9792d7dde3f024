import { expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { parseMountInfo } from "../../../src/linux/mountinfo.ts";

const sample = readFileSync(join(import.meta.dir, "../../fixtures/mountinfo"), "utf8");

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
