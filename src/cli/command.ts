import { defineCommand } from "citty";
import { CommandMounter } from "../linux/mounter.ts";
import { createLogger } from "../ops/log.ts";
import { VERSION } from "../version.ts";
import { args, type Config, configFromArgs } from "./config.ts";
import { exit } from "./exit.ts";
import { serve } from "./serve.ts";
import { ConfigError } from "./settings.ts";

/** The driver's command: flags, then `serve` until SIGTERM. */
export const main = defineCommand({
  meta: {
    name: "spiffe-csi-driver",
    version: VERSION,
    description:
      "CSI node plugin that bind-mounts the SPIFFE Workload API directory into pods. Also: `spiffe-csi-driver probe --help`, `spiffe-csi-driver doctor --help`",
  },
  args,
  async run({ args: parsed }) {
    let config: Config;
    try {
      config = configFromArgs(parsed as Record<string, unknown>, process.env);
    } catch (error) {
      if (error instanceof ConfigError) exit(2, error.message);
      throw error;
    }
    const mountPath = Bun.which("mount");
    const umountPath = Bun.which("umount");
    if (!mountPath || !umountPath) {
      exit(1, `cannot find ${mountPath ? "umount" : "mount"} on PATH (${process.env.PATH ?? ""})`);
    }
    const logger = createLogger(config.logLevel, config.logFormat);
    await serve(config, new CommandMounter(mountPath, umountPath, config.mountTimeoutMs), logger);
  },
});
