// Opening a directory the operator named without following links, and refusing a path someone
// other than its owner could redirect: real directories and modes, as whichever user runs the
// tests. What needs another user's directories or a mount is in tests/e2e/linux/trusted-path.
import { describe, expect, test } from "bun:test";
import { chmodSync, symlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { inode, links, open, refusal, trees } from "../../helpers/trusted-path.ts";

const tree = trees("trusted-path");

describe("the way to the directory", () => {
  test("a path of the user's own directories opens to that very directory", () => {
    const { c } = tree("plain");
    expect(open(c)).toBe(inode(c));
    expect(open(`${c}/`)).toBe(inode(c));
    expect(open(join(c, "."))).toBe(inode(c));
  });

  test("a missing name, and something that is not a directory, are said with where", () => {
    const { b, c } = tree("missing");
    expect(open(join(c, "d", "e"))).toBe(`missing ${join(c, "d")}`);
    writeFileSync(join(b, "file"), "");
    expect(open(join(b, "file"))).toBe(`not-directory ${join(b, "file")}`);
    expect(open(join(b, "file", "x"))).toBe(`not-directory ${join(b, "file")}`);
  });

  test("a symbolic link anywhere on the path is refused, naming it and where it points", () => {
    const { base, b, c } = tree("link");
    symlinkSync(b, join(base, "to-b"));
    const error = refusal(join(base, "to-b", "c"));
    expect(error.at).toBe(join(base, "to-b"));
    expect(error.message).toBe(`${join(base, "to-b")} is a symbolic link (to ${b})`);
    expect(error.fix).toContain("--allow-symlinked-socket-dir");
    // The directory itself as a link too: the agent's user could make one to any host directory.
    symlinkSync(c, join(base, "to-c"));
    expect(refusal(join(base, "to-c")).at).toBe(join(base, "to-c"));
  });

  test("allowed links are followed, relative and absolute, and a loop ends", () => {
    const { base, a, c } = tree("follow");
    symlinkSync("a/b", join(base, "relative"));
    symlinkSync(join(a, "b"), join(base, "absolute"));
    expect(open(join(base, "relative", "c"), links)).toBe(inode(c));
    expect(open(join(base, "absolute", "c"), links)).toBe(inode(c));
    symlinkSync("loop", join(base, "loop"));
    expect(refusal(join(base, "loop"), links).message).toContain("more than 40 symbolic links");
  });
});

describe("who can change it", () => {
  test("a directory above it that its group or others may write to is refused", () => {
    const { a, c } = tree("writable");
    for (const mode of [0o775, 0o757, 0o777]) {
      chmodSync(a, mode);
      const error = refusal(c);
      expect(error.at).toBe(a);
      expect(error.message).toContain(
        `writable by its group or by others (mode 0${mode.toString(8)})`,
      );
      expect(error.fix).toContain(`chmod go-w ${a}`);
    }
  });
});
