import { type ArgsDef, defineCommand } from "citty";
import { Identity } from "../gen/csi/v1/csi_pb.ts";
import { createClient } from "../rpc/client.ts";
import { unknownFlags } from "./argv.ts";

const args = {
  "csi-socket-path": {
    type: "string",
    description: "Unix socket the driver serves CSI on",
    default: "/spiffe-csi/csi.sock",
    valueHint: "path",
  },
  timeout: { type: "string", description: "Seconds to wait for an answer", default: "5" },
} satisfies ArgsDef;

function fail(code: number, message: string): never {
  process.stderr.write(`spiffe-csi-driver probe: ${message}\n`);
  process.exit(code);
}

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
    const unknown = unknownFlags(parsed as Record<string, unknown>, args);
    if (unknown.length > 0) fail(2, `unknown flag --${unknown[0]}`);
    const socketPath = parsed["csi-socket-path"];
    const seconds = Number(parsed.timeout);
    if (!Number.isFinite(seconds) || seconds <= 0) {
      fail(2, `--timeout must be a positive number, got "${parsed.timeout}"`);
    }
    const client = createClient(Identity, `unix://${socketPath}`);
    try {
      const answer = await client.probe({}, { deadline: Date.now() + seconds * 1000 });
      // CSI: an unset `ready` means ready.
      if (answer.ready === false) fail(1, `the driver on ${socketPath} is not ready`);
      process.exit(0);
    } catch (error) {
      const { details, message } = error as { details?: string; message: string };
      fail(1, `no answer from ${socketPath}: ${details ?? message}`);
    }
  },
});
