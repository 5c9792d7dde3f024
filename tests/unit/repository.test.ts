// The project names itself in one place, package.json's repository; what points at it elsewhere
// (the image's source label, the systemd unit's documentation) says the same, and the licence the
// package and the image name is there in full.
import { expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import pkg from "../../package.json" with { type: "json" };

const repo = join(import.meta.dir, "../..");
const read = (path: string) => readFileSync(join(repo, path), "utf8");

test("package.json names the project's repository", () => {
  expect(pkg.repository).toEqual({
    type: "git",
    url: "https://github.com/spiffe-csi-driver/spiffe-csi-driver",
  });
});

test("the image's source label points at the project", () => {
  expect(read("Containerfile")).toContain(
    `org.opencontainers.image.source="${pkg.repository.url}"`,
  );
});

test("the systemd unit's documentation points at the project", () => {
  const lines = read("deploy/systemd/spiffe-csi-driver.service").split("\n");
  expect(lines.filter((line) => line.startsWith("Documentation="))).toEqual([
    `Documentation=${pkg.repository.url}`,
  ]);
});

test("LICENSE holds the Apache License 2.0 that package.json and the image name", () => {
  const license = read("LICENSE");
  expect(pkg.license).toBe("Apache-2.0");
  expect(read("Containerfile")).toContain('org.opencontainers.image.licenses="Apache-2.0"');
  expect(license).toContain("Apache License\n                           Version 2.0, January 2004");
  expect(license).toContain("END OF TERMS AND CONDITIONS");
  for (let section = 1; section <= 9; section++) expect(license).toContain(`\n   ${section}. `);
});
