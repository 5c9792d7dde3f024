// Inspectors over the test child (inspector-child.ts), closed after the file's tests.
import { afterAll } from "bun:test";
import { resolve } from "node:path";
import { Inspector, type InspectorOptions } from "../../src/linux/inspector.ts";
import type { testOperations } from "./inspector-child.ts";

const CHILD = [process.execPath, resolve(import.meta.dir, "inspector-child.ts")];

/** A function that makes inspectors of the test operations; all are closed after the file. */
export function inspectors() {
  const opened: Inspector<typeof testOperations>[] = [];
  afterAll(async () => {
    await Promise.all(opened.map((each) => each.close()));
  }, 30_000);
  return (timeoutMs: number, options: Partial<InspectorOptions> = {}) => {
    const made = new Inspector<typeof testOperations>({ timeoutMs, command: CHILD, ...options });
    opened.push(made);
    return made;
  };
}

/** Whether process `pid` still exists. */
export function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}
