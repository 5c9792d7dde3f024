// docs/configuration.md says what the settings table holds: its flags table is the one
// scripts/configuration-doc.ts generates from the table (the same flags in the same order, each
// with the spellings it takes, the same default and the same help), every flag `--help` prints is
// on the page, and each has a section of its own, in the same order.
import { describe, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import {
  BEGIN,
  documentedDefault,
  END,
  flagsTable,
  pagePath,
  spellings,
} from "../../../scripts/configuration-doc.ts";
import { argsOf, flagOf, SETTINGS, type Setting } from "../../../src/cli/settings.ts";

const page = readFileSync(pagePath, "utf8");
const settings = Object.entries(SETTINGS) as [string, Setting][];

describe("docs/configuration.md", () => {
  test("holds exactly the flags table generated from the settings table", () => {
    const table = page.slice(page.indexOf(BEGIN), page.indexOf(END) + END.length);
    expect(table).toBe(flagsTable());
  });

  test("has a row for every flag --help prints, with its spellings and default", () => {
    for (const flag of Object.keys(argsOf(SETTINGS))) {
      const [name, setting] = settings.find(([n]) => flagOf(n) === flag) as [string, Setting];
      expect(page).toContain(`| ${spellings(name, setting)} | ${documentedDefault(setting)} |`);
    }
  });

  test("gives the -name spelling exactly where the Go reference has the flag", () => {
    expect(spellings("csiSocketPath", SETTINGS.csiSocketPath)).toBe(
      "`--csi-socket-path`, `-csi-socket-path`",
    );
    expect(spellings("allow", SETTINGS.allow)).toBe("`--allow`");
  });

  test("describes every flag in a section of its own, in the table's order, and nothing else", () => {
    const each = page.slice(page.indexOf("\n## Each flag\n"));
    expect([...each.matchAll(/^### `(--[a-z-]+)`$/gm)].map((m) => m[1])).toEqual(
      settings.map(([name]) => `--${flagOf(name)}`),
    );
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
