// The one executable's entry point. The inspector's child (see cli/inspector.ts) is started as
// `inspector` by the driver and the doctor, often: it is dispatched before anything else is
// loaded, so that it carries only its operations. The rest loads what its command needs.
const args = process.argv.slice(2);
if (args.length === 1 && args[0] === "inspector") {
  await (await import("./cli/inspector.ts")).serveInspector();
  process.exit(0);
}
const [{ runMain }, { normalizeArgv }] = await Promise.all([
  import("citty"),
  import("./cli/argv.ts"),
]);
const argv = normalizeArgv(args);
const [first, ...rest] = argv;
if (first === "probe") {
  await runMain((await import("./cli/probe.ts")).probe, { rawArgs: rest });
} else if (first === "doctor") {
  await runMain((await import("./cli/doctor.ts")).doctor, { rawArgs: rest });
} else {
  await runMain((await import("./cli/command.ts")).main, { rawArgs: argv });
}
