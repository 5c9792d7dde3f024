import { expect, test } from "bun:test";
import { createLogger } from "../../src/log.ts";

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
