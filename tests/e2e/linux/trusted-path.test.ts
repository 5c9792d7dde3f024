// Opening a directory the operator named, as root, where the path leads through directories
// another user owns (handed to it with chown), and to a removed directory a real bind mount still
// holds. The rules that need neither are in tests/unit/linux/trusted-path.
import { describe, expect, test } from "bun:test";
import { chmodSync, chownSync, mkdirSync, rmdirSync, symlinkSync } from "node:fs";
import { join } from "node:path";
import { gate } from "../../../src/linux/gate.ts";
import { assertPrivateMountNamespace, mountTestFile } from "../../helpers/driver.ts";
import { FuseMount } from "../../helpers/fuse.ts";
import { inode, links, open, refusal, trees } from "../../helpers/trusted-path.ts";

mountTestFile();
const AGENT_UID = 1000;
const tree = trees("trusted-path-root");

describe("the way to the directory", () => {
  test("a followed link that leads through a directory another user owns is refused there", () => {
    const { base } = tree("follow");
    const theirs = join(base, "theirs");
    mkdirSync(join(theirs, "inside"), { recursive: true });
    chownSync(theirs, AGENT_UID, AGENT_UID);
    symlinkSync(join(theirs, "inside"), join(base, "to-theirs"));
    expect(refusal(join(base, "to-theirs"), links).at).toBe(theirs);
  });
});

describe("who can change it", () => {
  test("a directory above it that another user owns is refused, naming it and the fix", () => {
    const { b, c } = tree("owner");
    chownSync(b, AGENT_UID, AGENT_UID);
    const error = refusal(c);
    expect(error.at).toBe(b);
    expect(error.message).toBe(
      `${b} is owned by uid ${AGENT_UID}, not root: that user could replace what the path leads to`,
    );
    expect(error.fix).toContain(`chown root ${b}`);
    // Even with links allowed.
    expect(refusal(c, links).at).toBe(b);
    // The driver's own uid is trusted like root.
    expect(open(c, { followLinks: false, uid: AGENT_UID })).toBe(inode(c));
  });

  test("a sticky directory others write to (as /tmp) is safe only for what root owns in it", () => {
    const { a, b, c } = tree("sticky");
    chmodSync(a, 0o1777);
    expect(open(c)).toBe(inode(c));
    // Another user's entry there could have been made by anyone, before the agent.
    chownSync(b, AGENT_UID, AGENT_UID);
    const error = refusal(c);
    expect(error.at).toBe(b);
    expect(error.message).toContain(
      `belongs to uid ${AGENT_UID} and is in ${a}, where others may create entries (mode 1777)`,
    );
    // The directory itself, as another user's, directly in the sticky directory: the same.
    const own = join(a, "agent-sockets");
    mkdirSync(own);
    chownSync(own, AGENT_UID, AGENT_UID);
    expect(refusal(own).at).toBe(own);
  });

  test("the directory itself may be the agent's, and writable by it", () => {
    const { c } = tree("agent-owned");
    chownSync(c, AGENT_UID, AGENT_UID);
    chmodSync(c, 0o770);
    expect(open(c)).toBe(inode(c));
  });
});

describe("a removed directory a mount still holds", () => {
  const run = (...argv: string[]) => {
    const result = Bun.spawnSync(argv, { stderr: "pipe" });
    if (result.exitCode !== 0) throw new Error(`${argv.join(" ")}: ${result.stderr}`);
  };

  test("the directory itself, bound and then removed, is 'removed'; re-created, it is not", () => {
    const { base } = tree("removed");
    const node = join(base, "node");
    const view = join(base, "view");
    mkdirSync(node);
    mkdirSync(view);
    run("mount", "--bind", node, view);
    try {
      expect(open(view)).toBe(inode(node));
      rmdirSync(node);
      expect(open(view)).toBe(`removed ${view}`);
      // The node's new directory is not what the mount holds.
      mkdirSync(node);
      expect(open(view)).toBe(`removed ${view}`);
      expect(open(node)).toBe(inode(node));
    } finally {
      run("umount", view);
    }
    expect(open(view)).toBe(inode(view));
  });

  test("a parent bound and then removed makes the directory below it 'removed', not missing", () => {
    const { base } = tree("removed-parent");
    const node = join(base, "node");
    const view = join(base, "view");
    mkdirSync(join(node, "agent-sockets"), { recursive: true });
    mkdirSync(view);
    run("mount", "--bind", node, view);
    try {
      expect(open(join(view, "agent-sockets"))).toBe(inode(join(node, "agent-sockets")));
      rmdirSync(join(node, "agent-sockets"));
      // Merely gone: the parent is still the node's.
      expect(open(join(view, "agent-sockets"))).toBe(`missing ${join(view, "agent-sockets")}`);
      rmdirSync(node);
      mkdirSync(join(node, "agent-sockets"), { recursive: true });
      expect(open(join(view, "agent-sockets"))).toBe(`removed ${view}`);
    } finally {
      run("umount", view);
    }
  });
});

describe("file systems mounted on the way", () => {
  const run = (...argv: string[]) => {
    const result = Bun.spawnSync(argv, { stderr: "pipe" });
    if (result.exitCode !== 0) throw new Error(`${argv.join(" ")}: ${result.stderr}`);
  };

  test("a FUSE file system over the directory, or over one on its way, is refused without a request reaching it", async () => {
    assertPrivateMountNamespace();
    const { b, c } = tree("fuse");
    chownSync(c, AGENT_UID, AGENT_UID);
    const overDirectory = await FuseMount.start(c);
    try {
      const before = await overDirectory.counts();
      const error = refusal(c);
      expect(error.at).toBe(c);
      expect(error.message).toContain(`${c} is on a fuse mount (source "stuck-fuse", at "${c}")`);
      expect(error.fix).toContain("keep the agent's sockets on a local file system");
      // Silent from now on: a walk that asked anything would hang here.
      await overDirectory.hang();
      expect(refusal(c, links).at).toBe(c);
      expect(await overDirectory.answer().then(() => overDirectory.counts())).toEqual(before);
    } finally {
      await overDirectory.stop();
    }
    const onTheWay = await FuseMount.start(b);
    try {
      await onTheWay.hang();
      expect(refusal(c).at).toBe(b);
    } finally {
      await onTheWay.stop();
    }
    expect(open(c)).toBe(inode(c));
  }, 60_000);

  test("local file systems mounted on the way and over the directory open as before", () => {
    assertPrivateMountNamespace();
    const { base, b, c } = tree("local");
    const node = join(base, "node");
    mkdirSync(node);
    // A container's view: the directory is a bind of a local directory, then a tmpfs over it.
    run("mount", "--bind", node, c);
    try {
      expect(open(c)).toBe(inode(node));
      run("mount", "-t", "tmpfs", "local-test", c);
      try {
        expect(open(c)).toBe(inode(c));
        expect(open(join(b, "c"))).toBe(inode(c));
      } finally {
        run("umount", c);
      }
    } finally {
      run("umount", c);
    }
  });

  test("a mount judged before is not asked about again, whatever else is mounted meanwhile", () => {
    assertPrivateMountNamespace();
    const { base, c } = tree("reads");
    const node = join(base, "node");
    mkdirSync(node);
    run("mount", "--bind", node, c);
    try {
      expect(open(c)).toBe(inode(node));
      const asked = { reads: gate.reads, statmounts: gate.statmounts };
      expect(open(c)).toBe(inode(node));
      expect(gate).toMatchObject(asked);
      // Another mount elsewhere: the bind is still the mount judged, by its unique id.
      const elsewhere = join(base, "elsewhere");
      mkdirSync(elsewhere);
      run("mount", "-t", "tmpfs", "reads-test", elsewhere);
      try {
        expect(open(c)).toBe(inode(node));
        expect(gate).toMatchObject(asked);
      } finally {
        run("umount", elsewhere);
      }
    } finally {
      run("umount", c);
    }
  });
});
