import { runMain } from "citty";
import { normalizeArgv } from "./cli/argv.ts";
import { main } from "./cli/command.ts";

// `probe` and `doctor` are loaded only when asked for.
const argv = normalizeArgv(process.argv.slice(2));
const [first, ...rest] = argv;
if (first === "probe") {
  await runMain((await import("./cli/probe.ts")).probe, { rawArgs: rest });
} else if (first === "doctor") {
  await runMain((await import("./cli/doctor.ts")).doctor, { rawArgs: rest });
} else {
  await runMain(main, { rawArgs: argv });
}
