// First: the modules below load under the start-up JIT policy.
import "./jit-policy.ts";
import { defineCommand } from "citty";
import { CommandMounter } from "../linux/mounter.ts";
import { createLogger } from "../ops/log.ts";
import { VERSION } from "../version.ts";
import { args, configFromArgs, parsedArgs } from "./config.ts";
import { exit, settingsOrExit } from "./exit.ts";
import { servingPolicy } from "./jit-policy.ts";
import { serve } from "./serve.ts";

/** The driver's command: flags, then `serve` until SIGTERM. */
export const main = defineCommand({
  meta: {
    name: "spiffe-csi-driver",
    version: VERSION,
    description:
      "CSI node plugin that bind-mounts the SPIFFE Workload API directory into pods. Also: `spiffe-csi-driver probe --help`, `spiffe-csi-driver doctor --help`",
  },
  args,
  async run({ args: parsed, rawArgs }) {
    servingPolicy();
    const config = settingsOrExit(() => configFromArgs(parsedArgs(parsed, rawArgs), process.env));
    const mountPath = Bun.which("mount");
    const umountPath = Bun.which("umount");
    if (!mountPath || !umountPath) {
      exit(1, `cannot find ${mountPath ? "umount" : "mount"} on PATH (${process.env.PATH ?? ""})`);
    }
    const logger = createLogger(config.logLevel, config.logFormat);
    await serve(config, new CommandMounter(mountPath, umountPath, config.mountTimeoutMs), logger);
  },
});
