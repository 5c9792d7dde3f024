import { runMain } from "citty";
import { main } from "./cli.ts";
import { normalizeArgv } from "./flags.ts";

// `probe` and `doctor` are loaded only when asked for.
const argv = normalizeArgv(process.argv.slice(2));
const [first, ...rest] = argv;
if (first === "probe") {
  await runMain((await import("./probe.ts")).probe, { rawArgs: rest });
} else if (first === "doctor") {
  await runMain((await import("./doctor.ts")).doctor, { rawArgs: rest });
} else {
  await runMain(main, { rawArgs: argv });
}
