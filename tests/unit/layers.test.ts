// The layout's rule, checked on every import in src/: cli wires csi, registration and rpc, which
// use linux; ops watches them (it may read csi and rpc, never the other way); nothing reaches back
// up. The logger, the log keys, the version and the generated types may be used from anywhere.
// Within and across folders, no file imports itself back through others (type-only imports and
// dynamic import() included): each file can be read, and tested, after the ones it uses.
import { describe, expect, test } from "bun:test";
import { posix, resolve } from "node:path";
import { Glob } from "bun";
import {
  importCycles,
  importGraph,
  importSpecifiers,
  readSources,
} from "../helpers/import-graph.ts";

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

const sources = readSources(src);

test("every import in src/ follows the layers", () => {
  const wrong: string[] = [];
  for (const [file, text] of sources) {
    if (file.startsWith("gen/")) continue;
    const from = folderOf(file);
    for (const spec of importSpecifiers(text)) {
      const target = posix.normalize(posix.join(posix.dirname(file), spec));
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

test("no import cycle among src/'s files", () => {
  // Each entry is one cycle, as `a.ts -> b.ts -> a.ts`: break it where a file imports what it
  // only needs a type or a value of that could live lower down.
  expect(importCycles(importGraph(sources))).toEqual([]);
});

describe("the cycle finder", () => {
  const graph = (edges: Record<string, string[]>) => new Map(Object.entries(edges));

  test("reads every kind of relative import, and no package import", () => {
    const text = [
      'import { a } from "./a.ts";',
      'import type { B } from "../b.ts";',
      "import {\n  c,\n  d,\n} from './c.ts';",
      'export { e } from "./e.ts";',
      'export * from "./f.ts";',
      'import "./side-effect.ts";',
      'const g = await import("./g.ts");',
      'const h = await import ( "./h.ts" );',
      'import { readFileSync } from "node:fs";',
      'import { Server } from "@grpc/grpc-js";',
    ].join("\n");
    expect(importSpecifiers(text)).toEqual([
      "./a.ts",
      "../b.ts",
      "./c.ts",
      "./e.ts",
      "./f.ts",
      "./side-effect.ts",
      "./g.ts",
      "./h.ts",
    ]);
  });

  test("resolves imports between the given files, type-only and dynamic alike", () => {
    const sources = new Map([
      ["csi/node.ts", 'import { publish } from "./publish.ts";'],
      ["csi/publish.ts", 'import type { Options } from "./node.ts";\nimport "../linux/m.ts";'],
      ["linux/m.ts", 'const x = await import("../csi/publish");'],
      ["linux/leaf.ts", 'import { x } from "node:fs";'],
    ]);
    expect(importGraph(sources)).toEqual(
      graph({
        "csi/node.ts": ["csi/publish.ts"],
        "csi/publish.ts": ["csi/node.ts", "linux/m.ts"],
        "linux/m.ts": ["csi/publish.ts"],
        "linux/leaf.ts": [],
      }),
    );
    expect(importCycles(importGraph(sources))).toEqual([
      "csi/node.ts -> csi/publish.ts -> csi/node.ts (and through the same files: linux/m.ts)",
    ]);
  });

  test("finds none where there is none, however the files share imports", () => {
    const acyclic = graph({ a: ["b", "c"], b: ["c", "d"], c: ["d"], d: [], e: ["a", "d"] });
    expect(importCycles(acyclic)).toEqual([]);
  });

  test("names each cycle by its shortest way round, a file importing itself included", () => {
    const cyclic = graph({
      a: ["b"],
      b: ["c"],
      c: ["a", "d"],
      d: [],
      e: ["e"],
      f: ["g", "a"],
      g: ["f"],
    });
    expect(importCycles(cyclic)).toEqual(["a -> b -> c -> a", "e -> e", "f -> g -> f"]);
  });
});
