import { expect, test } from "bun:test";
import { readdirSync, readFileSync, rmSync } from "node:fs";
import { join, relative, resolve } from "node:path";
import { tempDir } from "../../helpers/driver.ts";

const root = resolve(import.meta.dir, "../../..");

function files(dir: string): string[] {
  return readdirSync(dir, { recursive: true, withFileTypes: true })
    .filter((entry) => entry.isFile())
    .map((entry) => relative(dir, join(entry.parentPath, entry.name)))
    .sort();
}

test("src/gen is exactly what buf generate makes from proto/", () => {
  const out = tempDir("gen");
  // A home of its own: buf reads its configuration from the user's, which another user may not
  // be able to read (root's, for the unprivileged run).
  const home = tempDir("gen-home");
  try {
    const run = Bun.spawnSync(["node_modules/.bin/buf", "generate", "--output", out], {
      cwd: root,
      stderr: "pipe",
      // buf runs the protoc-gen-es plugin from node_modules/.bin, as `npm run generate` does.
      env: {
        ...process.env,
        HOME: home,
        XDG_CONFIG_HOME: join(home, ".config"),
        XDG_CACHE_HOME: join(home, ".cache"),
        PATH: `${join(root, "node_modules/.bin")}:${process.env.PATH}`,
      },
    });
    expect(run.stderr.toString()).toBe("");
    expect(run.exitCode).toBe(0);
    const fresh = join(out, "src/gen");
    const committed = join(root, "src/gen");
    expect(files(fresh)).toEqual(files(committed));
    for (const file of files(committed)) {
      expect(readFileSync(join(fresh, file), "utf8")).toBe(
        readFileSync(join(committed, file), "utf8"),
      );
    }
  } finally {
    rmSync(out, { recursive: true, force: true });
    rmSync(home, { recursive: true, force: true });
  }
}, 120_000);
