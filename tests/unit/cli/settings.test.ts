// The README's Flags table says what the settings table holds: the same flags in the same order,
// each with the spellings it takes and the same default.
import { describe, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { argsOf, flagOf, SETTINGS, type Setting } from "../../../src/cli/settings.ts";

const readme = readFileSync(join(import.meta.dir, "../../../README.md"), "utf8");

/** The rows of the README's Flags table, but the last (--help, --version): its cells. */
function flagRows(): string[][] {
  const section = readme.slice(readme.indexOf("\n## Flags\n"));
  const lines = section.slice(section.indexOf("| flag | default | meaning |")).split("\n");
  const end = lines.findIndex((line) => !line.startsWith("|"));
  return lines
    .slice(2, end)
    .map((row) =>
      row
        .replaceAll("\\|", "\0")
        .slice(1, -1)
        .split("|")
        .map((cell) => cell.replaceAll("\0", "|").trim()),
    )
    .filter(([flags]) => !flags?.startsWith("`--help`"));
}

/** What the README's default column must say for a setting. */
function documentedDefault(setting: Setting): string {
  if (setting.kind === "text" && setting.default !== undefined) return `\`${setting.default}\``;
  return setting.unset ?? "";
}

describe("the README's Flags table", () => {
  const rows = flagRows();
  const settings = Object.entries(SETTINGS) as [string, Setting][];

  test("lists every setting, and nothing else, in the table's order", () => {
    expect(rows.map(([flags]) => flags?.split("`")[1])).toEqual(
      settings.map(([name]) => `--${flagOf(name)}`),
    );
  });

  test("gives each flag its spellings: also -name where the Go reference has the flag", () => {
    for (const [index, [name, setting]] of settings.entries()) {
      const flag = flagOf(name);
      const spellings = setting.reference ? `\`--${flag}\`, \`-${flag}\`` : `\`--${flag}\``;
      expect(rows[index]?.[0]).toBe(spellings);
    }
  });

  test("states each default as the settings table has it", () => {
    for (const [index, [, setting]] of settings.entries()) {
      expect(rows[index]?.[1]).toBe(documentedDefault(setting));
    }
  });
});

describe("argsOf", () => {
  test("gives citty every setting, with its default, help and value hint", () => {
    const args = argsOf(SETTINGS);
    expect(Object.keys(args)).toEqual(Object.keys(SETTINGS).map(flagOf));
    expect(args["csi-socket-path"]).toEqual({
      type: "string",
      description: SETTINGS.csiSocketPath.help,
      default: "/spiffe-csi/csi.sock",
      valueHint: "path",
    });
    expect(args["recursive-bind"]).toEqual({
      type: "boolean",
      description: SETTINGS.recursiveBind.help,
    });
  });

  test("a command may drop a default, to learn whether the flag was given", () => {
    const { csiSocketPath } = SETTINGS;
    const args = argsOf({ csiSocketPath }, { csiSocketPath: { default: undefined } });
    expect(args["csi-socket-path"]).not.toHaveProperty("default");
  });
});
