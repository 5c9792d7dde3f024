import {
  type ConsolaInstance,
  type ConsolaReporter,
  createConsola,
  type LogObject,
} from "consola/core";

export const LOG_LEVELS = { error: 0, warn: 1, info: 3, debug: 4, trace: 5 } as const;
export type LogLevel = keyof typeof LOG_LEVELS;
export const LOG_FORMATS = ["text", "json"] as const;
export type LogFormat = (typeof LOG_FORMATS)[number];

/** Structured fields attached to a log line: `logger.info("message", { key: value })`. */
export type Fields = Record<string, unknown>;

export type Logger = ConsolaInstance;

const LEVEL_NAMES: Record<number, string> = {
  0: "error",
  1: "warn",
  2: "info",
  3: "info",
  4: "debug",
  5: "trace",
};

/** Splits consola's arguments into a message and fields; an Error becomes `error` (and `stack`). */
function lineParts(entry: LogObject): { message: string; fields: Fields } {
  const message: string[] = [];
  const fields: Fields = {};
  for (const arg of entry.args) {
    if (arg instanceof Error) {
      fields.error = arg.message;
      if (entry.level <= 0 && arg.stack) fields.stack = arg.stack;
    } else if (arg !== null && typeof arg === "object") {
      for (const [key, value] of Object.entries(arg)) {
        fields[key] = value instanceof Error ? value.message : value;
      }
    } else {
      message.push(String(arg));
    }
  }
  if (entry.message) message.unshift(entry.message);
  return { message: message.join(" "), fields };
}

function textValue(value: unknown): string {
  const text = typeof value === "string" ? value : JSON.stringify(value);
  return /^[^\s"=]+$/.test(text ?? "") ? (text ?? "") : JSON.stringify(text);
}

function reporter(format: LogFormat, write: (line: string) => void): ConsolaReporter {
  return {
    log(entry) {
      const { message, fields } = lineParts(entry);
      const level = LEVEL_NAMES[entry.level] ?? "info";
      const time = entry.date.toISOString();
      if (format === "json") {
        write(`${JSON.stringify({ time, level, msg: message, ...fields })}\n`);
        return;
      }
      const pairs = Object.entries(fields)
        .filter(([key]) => key !== "stack")
        .map(([key, value]) => ` ${key}=${textValue(value)}`)
        .join("");
      const stack = typeof fields.stack === "string" ? `\n${fields.stack}` : "";
      write(`${time} ${level.toUpperCase().padEnd(5)} ${message}${pairs}${stack}\n`);
    },
  };
}

export function createLogger(
  level: LogLevel,
  format: LogFormat,
  write: (line: string) => void = (line) => process.stderr.write(line),
): Logger {
  return createConsola({
    level: LOG_LEVELS[level],
    reporters: [reporter(format, write)],
    // Every RPC line counts: never fold repeated lines into one.
    throttle: 0,
  });
}
