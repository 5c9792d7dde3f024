// Prints CHANGELOG.md's section for a version: the lines under its `## ` heading (`## [0.2.0]`,
// `## 0.2.0 - 2026-12-01` or `## v0.2.0`), up to the next `## ` heading. Exits 1 when the
// section is missing or empty: no release goes out without notes.
//   bun scripts/release-notes.ts v0.2.0 [CHANGELOG.md]
import { readFileSync } from "node:fs";

/** The notes for `version` (with or without its leading v), or undefined. */
export function releaseNotes(changelog: string, version: string): string | undefined {
  const wanted = version.replace(/^v/, "");
  const lines = changelog.split("\n");
  const heading = /^## \[?v?([^\]\s]+)\]?(?:\s|$)/;
  const start = lines.findIndex((line) => heading.exec(line)?.[1] === wanted);
  if (start === -1) return undefined;
  const rest = lines.slice(start + 1);
  const end = rest.findIndex((line) => line.startsWith("## "));
  const notes = (end === -1 ? rest : rest.slice(0, end)).join("\n").trim();
  return notes === "" ? undefined : `${notes}\n`;
}

if (import.meta.main) {
  const [version, file = "CHANGELOG.md"] = process.argv.slice(2);
  if (!version) {
    console.error("usage: bun scripts/release-notes.ts VERSION [CHANGELOG.md]");
    process.exit(2);
  }
  const notes = releaseNotes(readFileSync(file, "utf8"), version);
  if (notes === undefined) {
    console.error(
      `${file} has no notes for ${version}: add a "## ${version.replace(/^v/, "")}" section`,
    );
    process.exit(1);
  }
  process.stdout.write(notes);
}
