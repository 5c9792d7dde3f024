// The flags table of docs/configuration.md, generated from the driver's settings table
// (src/cli/settings.ts): one row per flag, in `--help`'s order, with its spellings, its default
// and its help.
//   bun scripts/configuration-doc.ts     rewrites the table in docs/configuration.md
// tests/unit/cli/settings.test.ts checks that the page holds exactly this table, and a section
// for every flag.
import { readFileSync, writeFileSync } from "node:fs";
import { resolve } from "node:path";
import { flagOf, SETTINGS, type Setting } from "../src/cli/settings.ts";

export const pagePath = resolve(import.meta.dir, "..", "docs", "configuration.md");
export const BEGIN =
  "<!-- flags: generated from src/cli/settings.ts by scripts/configuration-doc.ts -->";
export const END = "<!-- end of flags -->";

/** A flag's spellings: also `-name`, with one dash, where the Go reference driver has it. */
export function spellings(name: string, setting: Setting): string {
  const flag = flagOf(name);
  return setting.reference ? `\`--${flag}\`, \`-${flag}\`` : `\`--${flag}\``;
}

/** What the default column says: the value taken when the flag is not given, or what unset means. */
export function documentedDefault(setting: Setting): string {
  if (setting.kind === "text" && setting.default !== undefined) return `\`${setting.default}\``;
  return setting.unset ?? "";
}

const cell = (text: string) => text.replaceAll("|", "\\|").replaceAll("\n", " ");

export function flagsTable(): string {
  const rows = (Object.entries(SETTINGS) as [string, Setting][]).map(
    ([name, setting]) =>
      `| ${spellings(name, setting)} | ${cell(documentedDefault(setting))} | ${cell(setting.help)} |`,
  );
  return [
    BEGIN,
    "",
    "| flag | default | `--help` says |",
    "|---|---|---|",
    ...rows,
    "| `--help`, `--version` | | Print usage or the version. |",
    "",
    END,
  ].join("\n");
}

if (import.meta.main) {
  const page = readFileSync(pagePath, "utf8");
  const start = page.indexOf(BEGIN);
  const end = page.indexOf(END);
  if (start < 0 || end < start) throw new Error(`${pagePath} has no ${BEGIN} ... ${END}`);
  writeFileSync(pagePath, page.slice(0, start) + flagsTable() + page.slice(end + END.length));
}
