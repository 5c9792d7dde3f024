import { expect, test } from "bun:test";
import { createLogger } from "../../src/ops/log.ts";
import { rawControl } from "../helpers/logs.ts";

function capture(level: "info" | "debug", format: "text" | "json") {
  const lines: string[] = [];
  return { lines, logger: createLogger(level, format, (line) => lines.push(line)) };
}

test("json: one object per line with time, level, message and fields", () => {
  const { lines, logger } = capture("info", "json");
  logger.info("starting", { version: "1.0.0", node_id: "n1" });
  logger.error("rpc", { method: "NodePublishVolume" }, new Error("mount failed"));
  expect(lines).toHaveLength(2);
  for (const line of lines)
    expect(line.endsWith("\n") && !line.slice(0, -1).includes("\n")).toBe(true);
  const first = JSON.parse(lines[0] ?? "");
  expect(first).toMatchObject({ level: "info", msg: "starting", version: "1.0.0", node_id: "n1" });
  expect(Date.parse(first.time)).not.toBeNaN();
  const second = JSON.parse(lines[1] ?? "");
  expect(second).toMatchObject({ level: "error", msg: "rpc", error: "mount failed" });
  expect(second.stack).toContain("mount failed");
});

test("text: level, message and key=value pairs, quoting values with spaces", () => {
  const { lines, logger } = capture("info", "text");
  logger.warn("socket dir missing", { path: "/run/spire sockets", count: 3 });
  expect(lines[0]).toMatch(
    /^\S+Z WARN {2}socket dir missing path="\/run\/spire sockets" count=3\n$/,
  );
});

test("the level filters lines; repeated lines are never folded", () => {
  const { lines, logger } = capture("info", "text");
  logger.debug("hidden");
  for (let i = 0; i < 5; i++) logger.info("same line");
  expect(lines).toHaveLength(5);
  const verbose = capture("debug", "text");
  verbose.logger.debug("shown");
  expect(verbose.lines).toHaveLength(1);
});

// Every class of character a caller could use to forge or hide a line, or steer a terminal.
const hostile: [string, string, string][] = [
  ["ESC (an ANSI colour and cursor move)", "\x1b[31mERROR\x1b[2K", "\\x1b[31mERROR\\x1b[2K"],
  ["BEL", "a\x07b", "a\\x07b"],
  [
    "OSC (a window title, ended by BEL and by ST)",
    "\x1b]0;owned\x07\x1b]2;x\x1b\\",
    "\\x1b]0;owned\\x07\\x1b]2;x\\x1b\\\\",
  ],
  ["NUL", "a\0b", "a\\x00b"],
  ["CR", "a\rb", "a\\x0db"],
  [
    "LF and a fake line",
    "v\n2024-01-01T00:00:00.000Z ERROR forged",
    "v\\x0a2024-01-01T00:00:00.000Z ERROR forged",
  ],
  ["DEL", "a\x7fb", "a\\x7fb"],
  ["C1 (NEL, CSI)", "a\u0085b\u009b31m", "a\\x85b\\x9b31m"],
  ["U+2028 and U+2029", "a\u2028b\u2029c", "a\\u{2028}b\\u{2029}c"],
  ["other non-ASCII", "é😀", "\\xe9\\u{1f600}"],
  ["a quote and a backslash", 'x" code=OK \\', 'x\\" code=OK \\\\'],
  ["a lone surrogate", "a\ud800b", "a\\u{d800}b"],
  [
    "bidirectional overrides, zero-width and tag characters",
    "a\u202eb\u2066c\u200bd\ufeffe\u{e0041}",
    "a\\u{202e}b\\u{2066}c\\u{200b}d\\u{feff}e\\u{e0041}",
  ],
];

/** True when the line holds nothing but printable ASCII before its one final newline. */
function cleanLine(line: string): boolean {
  return /^[\x20-\x7e]*\n$/.test(line);
}

for (const [name, value, escaped] of hostile) {
  test(`text: ${name} in a field and in the message is escaped`, () => {
    const { lines, logger } = capture("info", "text");
    logger.error(`rpc ${value}`, { volume_id: value, code: "NOT_FOUND" });
    expect(lines).toHaveLength(1);
    const line = lines[0] ?? "";
    expect(cleanLine(line)).toBe(true);
    expect(line).toContain(` ERROR rpc ${escaped} volume_id="${escaped}" code=NOT_FOUND\n`);
  });

  test(`json: ${name} is escaped and reads back unchanged`, () => {
    const { lines, logger } = capture("info", "json");
    logger.error(`rpc ${value}`, { volume_id: value });
    expect(lines).toHaveLength(1);
    const line = lines[0] ?? "";
    expect(line.endsWith("\n")).toBe(true);
    expect(rawControl(line.slice(0, -1))).toBeUndefined();
    // Nothing but printable ASCII: the line displays as what it holds.
    expect(cleanLine(line)).toBe(true);
    const record = JSON.parse(line);
    expect(record.volume_id).toBe(value);
    expect(record.msg).toBe(`rpc ${value}`);
  });
}

test("text: a value that could end its field early is quoted; a plain one is not", () => {
  const { lines, logger } = capture("info", "text");
  logger.info("x", { a: "plain/value-1", b: "k=v", c: "", d: 'say "hi"' });
  expect(lines[0]).toEndWith(' x a=plain/value-1 b="k=v" c="" d="say \\"hi\\""\n');
});

test("text: an error's stack stays below its line, escaped and indented", () => {
  const { lines, logger } = capture("info", "text");
  const error = new Error("bad\n2024-01-01T00:00:00.000Z INFO  forged\x1b[2K");
  logger.error("rpc", { code: "INTERNAL" }, error);
  expect(lines).toHaveLength(1);
  const [first, ...rest] = (lines[0] ?? "").slice(0, -1).split("\n");
  expect(first).toContain('error="bad\\x0a2024-01-01T00:00:00.000Z INFO  forged\\x1b[2K"');
  expect(rest.length).toBeGreaterThan(1);
  for (const line of rest) {
    expect(line).toMatch(/^ {4}/);
    expect(cleanLine(`${line}\n`)).toBe(true);
  }
});
