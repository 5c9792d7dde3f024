import type { ArgsDef } from "citty";

/**
 * The reference driver's flags are Go flags: `-name value` and `-name=value` with one dash.
 * Rewrites every one-dash word of more than one letter to `--name`, as Go reads it, so the
 * reference's DaemonSet args run unchanged; one-letter flags (-h, -v) stay as they are.
 */
export function normalizeArgv(argv: readonly string[]): string[] {
  const end = argv.indexOf("--");
  const flags = end === -1 ? argv : argv.slice(0, end);
  const rest = end === -1 ? [] : argv.slice(end);
  return [...flags.map((arg) => (/^-[^-=][^=]/.test(arg) ? `-${arg}` : arg)), ...rest];
}

const camelCase = (name: string) =>
  name.replace(/-(\w)/g, (_, letter: string) => letter.toUpperCase());

/** Flags given that `definitions` does not define (a typo must not fall back to a default). */
export function unknownFlags(parsed: Record<string, unknown>, definitions: ArgsDef): string[] {
  const names = [...Object.keys(definitions), "help", "version"];
  const known = new Set(["_", ...names, ...names.map(camelCase)]);
  return Object.keys(parsed).filter((key) => !known.has(key));
}
