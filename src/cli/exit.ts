import { ConfigError } from "./settings.ts";

/**
 * Ends the program with `code`, after one line on stderr when there is something to say: the
 * way every command ends, and every start-up problem. `command` names the subcommand speaking.
 */
export function exit(code: number, message?: string, command?: string): never {
  if (message !== undefined) {
    process.stderr.write(`spiffe-csi-driver${command ? ` ${command}` : ""}: ${message}\n`);
  }
  process.exit(code);
}

/** Reads a command's settings; a mistaken one ends the program with status 2, saying which. */
export function settingsOrExit<T>(read: () => T, command?: string): T {
  try {
    return read();
  } catch (error) {
    if (error instanceof ConfigError) exit(2, error.message, command);
    throw error;
  }
}
