// scripts/release-notes.ts: the release's notes are CHANGELOG.md's section for the tag.
import { expect, test } from "bun:test";
import { resolve } from "node:path";
import { releaseNotes } from "../../scripts/release-notes.ts";

const changelog = `# Changelog

## [Unreleased]

- Not yet.

## [0.2.0] - 2026-12-01

### Changed

- The RPC metrics are named as the gRPC ecosystem names them.

## 0.1.0

- First release.
`;

test("the section of the tag's version, without its heading, up to the next version", () => {
  expect(releaseNotes(changelog, "v0.2.0")).toBe(
    "### Changed\n\n- The RPC metrics are named as the gRPC ecosystem names them.\n",
  );
  expect(releaseNotes(changelog, "0.1.0")).toBe("- First release.\n");
});

test("no section, an empty one, or a version that only starts the same, is no notes", () => {
  expect(releaseNotes(changelog, "v0.3.0")).toBeUndefined();
  expect(releaseNotes(changelog, "v0.2")).toBeUndefined();
  expect(releaseNotes("## 1.0.0\n\n## 0.9.0\n- x\n", "1.0.0")).toBeUndefined();
});

test("the script exits 1 without notes, so the release stops", () => {
  const script = resolve(import.meta.dir, "../../scripts/release-notes.ts");
  const run = Bun.spawnSync([process.execPath, script, "v9.9.9", "/dev/null"], { stderr: "pipe" });
  expect(run.exitCode).toBe(1);
  expect(run.stderr.toString()).toContain('add a "## 9.9.9" section');
}, 60_000);
