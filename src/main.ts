import { runMain } from "citty";
import { normalizeArgv } from "./cli/argv.ts";
import { main } from "./cli/command.ts";

// `probe`, `doctor` and the inspector's child are loaded only when asked for.
const argv = normalizeArgv(process.argv.slice(2));
const [first, ...rest] = argv;
if (first === "inspector" && rest.length === 0) {
  // Started by the driver and the doctor themselves (see linux/inspector.ts).
  await (await import("./cli/inspector.ts")).serveInspector();
  process.exit(0);
} else if (first === "probe") {
  await runMain((await import("./cli/probe.ts")).probe, { rawArgs: rest });
} else if (first === "doctor") {
  await runMain((await import("./cli/doctor.ts")).doctor, { rawArgs: rest });
} else {
  await runMain(main, { rawArgs: argv });
}
