// The doctor's checks of what the process itself needs: the mount programs and CAP_SYS_ADMIN.

import { readFileSync } from "node:fs";
import { type Check, fail, pass } from "./doctor-checks.ts";

// Linux capability number of CAP_SYS_ADMIN.
const CAP_SYS_ADMIN = 21n;

export function programChecks(): Check[] {
  return ["mount", "umount"].map((program) => {
    const path = Bun.which(program);
    return path
      ? pass(`${program} is on PATH`, path)
      : fail(
          `${program} is on PATH`,
          `not found on ${process.env.PATH ?? ""}`,
          "install util-linux, or add its directory to PATH",
        );
  });
}

export function capabilityCheck(): Check {
  const name = "process has CAP_SYS_ADMIN";
  const effective = /^CapEff:\s*([0-9a-f]+)$/m.exec(readFileSync("/proc/self/status", "utf8"))?.[1];
  const has = effective !== undefined && ((BigInt(`0x${effective}`) >> CAP_SYS_ADMIN) & 1n) === 1n;
  return has
    ? pass(name, `CapEff ${effective}`)
    : fail(
        name,
        `CapEff ${effective ?? "unknown"}`,
        "run the driver as root in a privileged container (securityContext.privileged: true)",
      );
}
