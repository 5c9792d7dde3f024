// Which of a tree's TypeScript files import which, and the import cycles among them.
import { readFileSync } from "node:fs";
import { posix } from "node:path";
import { Glob } from "bun";

/**
 * The relative specifiers a module imports: `import ... from`, `import type ... from`,
 * `export ... from`, a bare `import "..."` and a dynamic `import("...")`. Package imports
 * (`node:fs`, `@grpc/grpc-js`) are not the tree's and are left out.
 */
export function importSpecifiers(text: string): string[] {
  const found = text.matchAll(/(?:\bfrom|\bimport\s*\(|\bimport)\s*(["'])(\.{1,2}\/[^"'\n]+)\1/g);
  return [...found].map((match) => match[2] as string);
}

/** Every `.ts` file below `root`, by its path relative to `root`, with its text. */
export function readSources(root: string): Map<string, string> {
  const files = [...new Glob("**/*.ts").scanSync(root)].sort();
  return new Map(files.map((file) => [file, readFileSync(posix.join(root, file), "utf8")]));
}

/** Each file's imports of other files of `sources`, as paths relative to the same root. */
export function importGraph(sources: Map<string, string>): Map<string, string[]> {
  const resolveIn = (from: string, spec: string) => {
    const path = posix.normalize(posix.join(posix.dirname(from), spec));
    const candidates = [path, `${path}.ts`, posix.join(path, "index.ts")];
    return candidates.find((candidate) => sources.has(candidate)) ?? path;
  };
  const graph = new Map<string, string[]>();
  for (const [file, text] of sources) {
    const targets = importSpecifiers(text).map((spec) => resolveIn(file, spec));
    graph.set(
      file,
      [...new Set(targets)].filter((target) => sources.has(target)),
    );
  }
  return graph;
}

/**
 * The import cycles of `graph`, one per set of files that all reach each other, each said as
 * the shortest cycle through the set's first file (`a.ts -> b.ts -> a.ts`), followed by the
 * set's other files when the cycle does not pass through them all. Empty when there is none.
 */
export function importCycles(graph: Map<string, string[]>): string[] {
  return stronglyConnected(graph)
    .filter((set) => set.length > 1 || graph.get(set[0] as string)?.includes(set[0] as string))
    .map((set) => {
      const members = new Set(set);
      const cycle = shortestCycle(graph, set[0] as string, members);
      const rest = set.filter((file) => !cycle.includes(file));
      const said = cycle.join(" -> ");
      return rest.length === 0 ? said : `${said} (and through the same files: ${rest.join(", ")})`;
    });
}

/** Tarjan's algorithm: the graph's strongly connected sets, each sorted, sorted by first file. */
function stronglyConnected(graph: Map<string, string[]>): string[][] {
  const index = new Map<string, number>();
  const low = new Map<string, number>();
  const stack: string[] = [];
  const onStack = new Set<string>();
  const sets: string[][] = [];
  const visit = (node: string) => {
    index.set(node, index.size);
    low.set(node, index.get(node) as number);
    stack.push(node);
    onStack.add(node);
    for (const next of graph.get(node) ?? []) {
      if (!index.has(next)) {
        visit(next);
        low.set(node, Math.min(low.get(node) as number, low.get(next) as number));
      } else if (onStack.has(next)) {
        low.set(node, Math.min(low.get(node) as number, index.get(next) as number));
      }
    }
    if (low.get(node) !== index.get(node)) return;
    const set: string[] = [];
    for (let member = stack.pop(); ; member = stack.pop()) {
      onStack.delete(member as string);
      set.push(member as string);
      if (member === node) break;
    }
    sets.push(set.sort());
  };
  for (const node of [...graph.keys()].sort()) if (!index.has(node)) visit(node);
  return sets.sort((a, b) => (a[0] as string).localeCompare(b[0] as string));
}

/** The shortest path from `start` back to itself within `members`, breadth first. */
function shortestCycle(graph: Map<string, string[]>, start: string, members: Set<string>) {
  const cameFrom = new Map<string, string>();
  const queue = [start];
  for (let at = 0; at < queue.length; at++) {
    const node = queue[at] as string;
    for (const next of graph.get(node) ?? []) {
      if (!members.has(next)) continue;
      if (next === start) {
        const path = [start];
        for (let back = node; back !== start; back = cameFrom.get(back) as string) {
          path.splice(1, 0, back);
        }
        return [...path, start];
      }
      if (!cameFrom.has(next)) {
        cameFrom.set(next, node);
        queue.push(next);
      }
    }
  }
  return [start, start];
}
