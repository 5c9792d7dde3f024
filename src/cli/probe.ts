import { type ArgsDef, defineCommand } from "citty";
import { Identity } from "../gen/csi/v1/csi_pb.ts";
import { createClient } from "../rpc/client.ts";
import { unknownFlags } from "./argv.ts";
import { exit } from "./exit.ts";
import { argsOf, ConfigError, positiveSeconds, readSetting, SETTINGS } from "./settings.ts";

const { csiSocketPath } = SETTINGS;
const timeout = {
  kind: "text",
  default: "5",
  help: "Seconds to wait for an answer",
  parse: positiveSeconds,
} as const;

const args = argsOf(
  { csiSocketPath, timeout },
  { csiSocketPath: { help: "Unix socket the driver serves CSI on" } },
) satisfies ArgsDef;

/**
 * `spiffe-csi-driver probe`: asks the driver on the CSI socket whether it is ready, for an exec
 * liveness or readiness probe in an image that has no shell. Exit 0 when ready; 1, with the
 * reason on stderr, when not ready or unreachable; 2 for a mistaken flag (a typo must never
 * quietly probe the default socket).
 */
export const probe = defineCommand({
  meta: {
    name: "probe",
    description: "Call Probe on the CSI socket: exit 0 when ready, 1 when not",
  },
  args,
  async run({ args: parsed }) {
    let socketPath: string;
    let timeoutMs: number;
    try {
      const unknown = unknownFlags(parsed as Record<string, unknown>, args);
      if (unknown.length > 0) throw new ConfigError(`unknown flag --${unknown[0]}`);
      socketPath = readSetting("csiSocketPath", csiSocketPath, parsed);
      timeoutMs = readSetting("timeout", timeout, parsed);
    } catch (error) {
      if (error instanceof ConfigError) exit(2, error.message, "probe");
      throw error;
    }
    const client = createClient(Identity, `unix://${socketPath}`);
    try {
      const answer = await client.probe({}, { deadline: Date.now() + timeoutMs });
      // CSI: an unset `ready` means ready.
      if (answer.ready === false) exit(1, `the driver on ${socketPath} is not ready`, "probe");
      exit(0);
    } catch (error) {
      const { details, message } = error as { details?: string; message: string };
      exit(1, `no answer from ${socketPath}: ${details ?? message}`, "probe");
    }
  },
});
