import { defineCommand } from "citty";
import { Identity } from "./gen/csi/v1/csi_pb.ts";
import { createClient } from "./grpc/client.ts";

/**
 * `spiffe-csi-driver probe`: asks the driver on the CSI socket whether it is ready, for an exec
 * liveness or readiness probe in an image that has no shell. Exit 0 when ready; 1, with the
 * reason on stderr, when not ready or unreachable.
 */
export const probe = defineCommand({
  meta: {
    name: "probe",
    description: "Call Probe on the CSI socket: exit 0 when ready, 1 when not",
  },
  args: {
    "csi-socket-path": {
      type: "string",
      description: "Unix socket the driver serves CSI on",
      default: "/spiffe-csi/csi.sock",
      valueHint: "path",
    },
    timeout: { type: "string", description: "Seconds to wait for an answer", default: "5" },
  },
  async run({ args }) {
    const seconds = Number(args.timeout);
    if (!Number.isFinite(seconds) || seconds <= 0) {
      process.stderr.write(
        `spiffe-csi-driver probe: --timeout must be a positive number, got "${args.timeout}"\n`,
      );
      process.exit(2);
    }
    const client = createClient(Identity, `unix://${args["csi-socket-path"]}`);
    try {
      const answer = await client.probe({}, { deadline: Date.now() + seconds * 1000 });
      // CSI: an unset `ready` means ready.
      if (answer.ready === false) {
        process.stderr.write(
          `spiffe-csi-driver probe: the driver on ${args["csi-socket-path"]} is not ready\n`,
        );
        process.exit(1);
      }
      process.exit(0);
    } catch (error) {
      const { details, message } = error as { details?: string; message: string };
      process.stderr.write(
        `spiffe-csi-driver probe: no answer from ${args["csi-socket-path"]}: ${details ?? message}\n`,
      );
      process.exit(1);
    }
  },
});
