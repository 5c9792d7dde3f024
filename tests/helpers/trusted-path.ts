// Real directory trees for the trusted-path tests (src/linux/trusted-path.ts), and what opening
// a path in them gives. The tests' root is removed after the file; a mount left in it fails it.
import { afterAll, expect } from "bun:test";
import { mkdirSync, rmSync, statSync } from "node:fs";
import { join } from "node:path";
import {
  openTrustedDirectory,
  type TrustedDirectory,
  type TrustedPathOptions,
  UnsafePathError,
} from "../../src/linux/trusted-path.ts";
import { tempDir } from "./driver.ts";
import { mountsUnder } from "./kubelet.ts";

export const strict: TrustedPathOptions = { followLinks: false };
export const links: TrustedPathOptions = { followLinks: true };

/** The inode opening `path` should give, in the form `open` answers. */
export const inode = (path: string) => `directory ${statSync(path).ino}`;

/** What opening `path` gives: the directory's inode, or the kind and place it stopped at. */
export function open(path: string, options = strict): string {
  const result: TrustedDirectory = openTrustedDirectory(path, options);
  if (result.kind !== "directory") return `${result.kind} ${result.at}`;
  try {
    return `directory ${result.handle.ino}`;
  } finally {
    result.handle.close();
  }
}

/** The refusal opening `path` gives: where, and why. */
export function refusal(path: string, options = strict): UnsafePathError {
  try {
    const result = openTrustedDirectory(path, options);
    if (result.kind === "directory") result.handle.close();
  } catch (error) {
    if (error instanceof UnsafePathError) return error;
    throw error;
  }
  throw new Error(`${path} was not refused`);
}

/** A test file's root; `tree(name)` makes `a/b/c` under it, the current user's, mode 0755. */
export function trees(prefix: string) {
  const root = tempDir(prefix);
  afterAll(() => {
    expect(mountsUnder(root)).toBe(0);
    rmSync(root, { recursive: true, force: true });
  }, 30_000);
  return function tree(name: string): { base: string; a: string; b: string; c: string } {
    const base = join(root, name);
    const a = join(base, "a");
    const b = join(a, "b");
    const c = join(b, "c");
    mkdirSync(c, { recursive: true, mode: 0o755 });
    return { base, a, b, c };
  };
}
