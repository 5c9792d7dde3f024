import { runMain } from "citty";
import { main, normalizeArgv } from "./cli.ts";

await runMain(main, { rawArgs: normalizeArgv(process.argv.slice(2)) });
