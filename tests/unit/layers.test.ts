// The layout's rule, checked on every import in src/: cli wires csi, registration and rpc, which
// use linux; ops watches them (it may read csi and rpc, never the other way); nothing reaches back
// up. The logger, the log keys, the version and the generated types may be used from anywhere.
import { expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { dirname, join, relative, resolve } from "node:path";
import { Glob } from "bun";

const src = resolve(import.meta.dir, "../../src");
const ANYWHERE = ["ops/log.ts", "ops/log-keys.ts", "version.ts"];
/** The folders each folder's modules may import from (besides its own and ANYWHERE). */
const ALLOWED: Record<string, string[]> = {
  ".": ["cli"],
  cli: ["csi", "registration", "rpc", "linux", "selinux", "ops", "gen"],
  csi: ["rpc", "linux", "gen"],
  registration: ["rpc", "gen"],
  rpc: ["linux"],
  selinux: ["linux"],
  ops: ["csi", "rpc", "linux", "gen"],
  linux: [],
};

const folderOf = (file: string) => {
  const [first, ...rest] = file.split("/");
  return rest.length === 0 ? "." : (first as string);
};

test("every import in src/ follows the layers", () => {
  const wrong: string[] = [];
  for (const file of new Glob("**/*.ts").scanSync(src)) {
    if (file.startsWith("gen/")) continue;
    const from = folderOf(file);
    const text = readFileSync(join(src, file), "utf8");
    for (const [, spec] of text.matchAll(/(?:from|import\(?)\s*"(\.{1,2}\/[^"]+)"/g)) {
      const target = relative(src, resolve(dirname(join(src, file)), spec as string));
      const to = folderOf(target);
      const allowed = to === from || ANYWHERE.includes(target) || ALLOWED[from]?.includes(to);
      if (!allowed) wrong.push(`${file} imports ${target}`);
    }
  }
  expect(wrong).toEqual([]);
});

test("src/ holds only the entry point and the version at its top level", () => {
  const top = [...new Glob("*").scanSync({ cwd: src, onlyFiles: true })].sort();
  expect(top).toEqual(["main.ts", "version.ts"]);
});
