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

/**
 * Escapes a string for the text format: printable ASCII stays as it is, a backslash and a double
 * quote get a backslash, anything else (control bytes such as ESC, BEL, NUL, CR and LF, DEL, C1
 * controls, any other non-ASCII character) becomes `\xNN` or `\u{...}`. A caller's string can
 * then neither end its field early nor start a line, nor steer a terminal.
 */
export function escapeText(text: string): string {
  let escaped = "";
  for (const char of text) {
    const code = char.codePointAt(0) ?? 0;
    if (char === "\\" || char === '"') escaped += `\\${char}`;
    else if (code >= 0x20 && code < 0x7f) escaped += char;
    else if (code < 0x100) escaped += `\\x${code.toString(16).padStart(2, "0")}`;
    else escaped += `\\u{${code.toString(16)}}`;
  }
  return escaped;
}

function textValue(value: unknown): string {
  const text = (typeof value === "string" ? value : JSON.stringify(value)) ?? "";
  return /^[!#-<>-[\]-~]+$/.test(text) ? text : `"${escapeText(text)}"`;
}

/**
 * JSON.stringify escapes C0 controls but leaves DEL, the C1 controls (U+0085 is a line break to
 * some readers), U+2028/U+2029 (line breaks to JavaScript and many log viewers), and characters
 * that change how a line displays (bidirectional overrides, zero-width and tag characters) raw.
 */
function jsonLine(record: Record<string, unknown>): string {
  // Every UTF-16 unit outside printable ASCII, as \uXXXX (a character beyond the BMP as its
  // surrogate pair): a JSON reader gets the same string back.
  return JSON.stringify(record).replace(
    /[^\u0020-\u007e]/g,
    (char) => `\\u${char.charCodeAt(0).toString(16).padStart(4, "0")}`,
  );
}

/** A stack's lines, escaped, each indented: no line of it can pass for a log line. */
function textStack(stack: string): string {
  return stack
    .split("\n")
    .map((line) => {
      const escaped = escapeText(line);
      return escaped.startsWith(" ") ? `\n${escaped}` : `\n    ${escaped}`;
    })
    .join("");
}

function reporter(format: LogFormat, write: (line: string) => void): ConsolaReporter {
  return {
    log(entry) {
      const { message, fields } = lineParts(entry);
      const level = LEVEL_NAMES[entry.level] ?? "info";
      const time = entry.date.toISOString();
      if (format === "json") {
        write(`${jsonLine({ time, level, msg: message, ...fields })}\n`);
        return;
      }
      const pairs = Object.entries(fields)
        .filter(([key]) => key !== "stack")
        .map(([key, value]) => ` ${escapeText(key)}=${textValue(value)}`)
        .join("");
      const stack = typeof fields.stack === "string" ? textStack(fields.stack) : "";
      write(`${time} ${level.toUpperCase().padEnd(5)} ${escapeText(message)}${pairs}${stack}\n`);
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
