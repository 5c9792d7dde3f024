// The values table of deploy/helm/spiffe-csi-driver/README.md, generated from the chart's
// values.schema.json: one row per value, with its default and its description.
//   bun scripts/chart-readme.ts     rewrites the table in the README
// tests/manifests/chart.test.ts checks that the README holds exactly this table.
import { readFileSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";

const chart = resolve(import.meta.dir, "..", "deploy", "helm", "spiffe-csi-driver");
export const readmePath = join(chart, "README.md");
export const BEGIN =
  "<!-- values: generated from values.schema.json by scripts/chart-readme.ts -->";
export const END = "<!-- end of values -->";

type Schema = {
  type?: string;
  description?: string;
  default?: unknown;
  enum?: unknown[];
  properties?: Record<string, Schema>;
};

/** Every value the schema describes, as [dotted name, schema]; objects with properties recurse. */
export function schemaValues(schema: Schema, prefix = ""): [string, Schema][] {
  return Object.entries(schema.properties ?? {}).flatMap(([name, child]) => {
    const path = prefix ? `${prefix}.${name}` : name;
    return child.properties ? schemaValues(child, path) : [[path, child] as [string, Schema]];
  });
}

const cell = (text: string) => text.replaceAll("|", "\\|").replaceAll("\n", " ");

export function valuesTable(): string {
  const schema = JSON.parse(readFileSync(join(chart, "values.schema.json"), "utf8")) as Schema;
  const rows = schemaValues(schema).map(([name, value]) => {
    const fallback = value.default === undefined ? "" : `\`${JSON.stringify(value.default)}\``;
    const choices = value.enum ? ` One of ${value.enum.map((v) => `\`${v}\``).join(", ")}.` : "";
    return `| \`${name}\` | ${cell(fallback)} | ${cell(`${value.description ?? ""}${choices}`)} |`;
  });
  return [BEGIN, "", "| value | default | meaning |", "|---|---|---|", ...rows, "", END].join("\n");
}

if (import.meta.main) {
  const readme = readFileSync(readmePath, "utf8");
  const start = readme.indexOf(BEGIN);
  const end = readme.indexOf(END);
  if (start < 0 || end < start) throw new Error(`${readmePath} has no ${BEGIN} ... ${END}`);
  writeFileSync(
    readmePath,
    readme.slice(0, start) + valuesTable() + readme.slice(end + END.length),
  );
}
