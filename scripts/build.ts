// Compiles the driver into one executable: dist/spiffe-csi-driver.
// BUILD_TARGET chooses another platform (e.g. bun-linux-arm64), BUILD_OUTFILE another path.
// In a container build, TARGETARCH (amd64, arm64) chooses the platform when BUILD_TARGET is unset.
import { existsSync } from "node:fs";
import { join } from "node:path";
import pkg from "../package.json" with { type: "json" };

const TARGETS: Record<string, Bun.Build.CompileTarget> = {
  amd64: "bun-linux-x64",
  arm64: "bun-linux-arm64",
};
const arch = process.env.TARGETARCH;
if (arch && !TARGETS[arch]) {
  console.error(`TARGETARCH ${arch} is not one of ${Object.keys(TARGETS).join(", ")}`);
  process.exit(1);
}
// Without either, the platform this runs on.
const target =
  (process.env.BUILD_TARGET as Bun.Build.CompileTarget | undefined) ??
  (arch ? TARGETS[arch] : undefined);
const outfile = process.env.BUILD_OUTFILE ?? "dist/spiffe-csi-driver";
// Where the bytecode of the functions the driver runs goes: first, together, in the order
// `npm run bytecode-order` recorded (the server's run first, then the probe's), so that the
// executable reads and keeps less of itself. A missing profile only costs memory; the program
// is the same.
const bytecodeOrder = ["serve", "probe"]
  .map((name) => join(import.meta.dir, "bytecode-order", `${name}.order`))
  .filter((path) => existsSync(path));

const result = await Bun.build({
  entrypoints: ["src/main.ts"],
  compile: {
    ...(target ? { target } : {}),
    outfile,
    // The driver is configured by flags only: a stray .env or bunfig.toml on the node must not
    // change how it runs.
    autoloadDotenv: false,
    autoloadBunfig: false,
    autoloadTsconfig: false,
    autoloadPackageJson: false,
    ...(bytecodeOrder.length > 0 && { bytecodeOrder }),
  },
  minify: true,
  bytecode: true,
  format: "esm",
  sourcemap: "none",
  define: { BUILD_VERSION: JSON.stringify(pkg.version) },
});
if (!result.success) {
  for (const log of result.logs) console.error(log);
  process.exit(1);
}
console.log(`built ${outfile} (${pkg.version}, ${target ?? "this platform"})`);
