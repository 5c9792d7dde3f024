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
