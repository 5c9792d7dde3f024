// openAt opens what the /proc/self/fd/N/name path form opens, entry by entry, and fails the way
// it does: real directories, links and files, as whichever user runs the tests.
import { afterAll, describe, expect, test } from "bun:test";
import {
  closeSync,
  constants,
  fstatSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readFileSync,
  rmSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { O_PATH } from "../../../src/linux/descriptors.ts";
import { openAt } from "../../../src/linux/openat.ts";

const STEP = O_PATH | constants.O_DIRECTORY | constants.O_NOFOLLOW;
const base = mkdtempSync(join(tmpdir(), "spiffe-csi-openat-"));
mkdirSync(join(base, "sub"));
mkdirSync(join(base, "sub", "inner"));
symlinkSync(join(base, "sub"), join(base, "link"));
writeFileSync(join(base, "file"), "");
const dir = openSync(base, O_PATH | constants.O_DIRECTORY);
afterAll(() => {
  closeSync(dir);
  rmSync(base, { recursive: true, force: true });
});

/** What a call gives: the (device, inode) opened, or the error's code. */
function outcome(open: () => number): string {
  let fd: number;
  try {
    fd = open();
  } catch (error) {
    return (error as NodeJS.ErrnoException).code ?? String(error);
  }
  try {
    const { dev, ino } = fstatSync(fd);
    return `${dev}:${ino}`;
  } finally {
    closeSync(fd);
  }
}

const pathForm =
  (name: string, flags = STEP) =>
  () =>
    openSync(`/proc/self/fd/${dir}/${name}`, flags);

describe("openAt", () => {
  test.each([
    ["a directory", "sub", STEP],
    ["a missing name", "missing", STEP],
    ["a symbolic link, not followed", "link", STEP],
    ["a file where a directory is wanted", "file", STEP],
    ["a file, held without opening it", "file", O_PATH | constants.O_NOFOLLOW],
    ["a symbolic link itself", "link", O_PATH | constants.O_NOFOLLOW],
    ["the parent", "..", STEP],
    ["the directory itself as '.'", ".", STEP],
    ["an empty name (the directory itself)", "", STEP],
    ["two names (both looked up below the directory)", "sub/inner", STEP],
    ["an absolute name (still below the directory, as in the path form)", "/sub", STEP],
    ["a name longer than any file system allows", "x".repeat(300), STEP],
  ])("%s: the same as the path form", (_, name, flags) => {
    const expected = outcome(pathForm(name, flags));
    expect(outcome(() => openAt(dir, name, flags))).toBe(expected);
  });

  test("the forms agree on what they found, and what they did not", () => {
    const sub = statSync(join(base, "sub"));
    expect(outcome(() => openAt(dir, "sub", STEP))).toBe(`${sub.dev}:${sub.ino}`);
    expect(outcome(() => openAt(dir, "missing", STEP))).toBe("ENOENT");
    expect(["ELOOP", "ENOTDIR"]).toContain(outcome(() => openAt(dir, "link", STEP)));
  });

  test("a failure says the errno, its meaning and the path, as node:fs does", () => {
    let error: NodeJS.ErrnoException | undefined;
    try {
      openAt(dir, "missing", STEP);
    } catch (caught) {
      error = caught as NodeJS.ErrnoException;
    }
    expect(error?.code).toBe("ENOENT");
    expect(error?.errno).toBe(-2);
    expect(error?.path).toBe(`/proc/self/fd/${dir}/missing`);
    expect(error?.message).toBe(
      `ENOENT: no such file or directory, openat '/proc/self/fd/${dir}/missing'`,
    );
  });

  test("a name with a NUL in it is refused, never cut short at the NUL", () => {
    expect(() => openAt(dir, "sub\0x", STEP)).toThrow();
  });

  test("the descriptor is close-on-exec, as node:fs opens them", () => {
    const fd = openAt(dir, "sub", STEP);
    try {
      const flags = /^flags:\s*([0-7]+)$/m.exec(readFileSync(`/proc/self/fdinfo/${fd}`, "utf8"));
      expect(flags).not.toBeNull();
      expect(Number.parseInt(flags?.[1] ?? "0", 8) & 0o2000000).toBe(0o2000000);
    } finally {
      closeSync(fd);
    }
  });
});
