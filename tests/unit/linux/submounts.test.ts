import { describe, expect, test } from "bun:test";
import { parseMountInfo } from "../../../src/linux/mountinfo.ts";
import { entangled, mountTree } from "../../../src/linux/submounts.ts";

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
