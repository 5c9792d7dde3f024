// Compiles the driver into one executable: dist/spiffe-csi-driver.
// BUILD_TARGET chooses another platform (e.g. bun-linux-arm64), BUILD_OUTFILE another path.
import pkg from "../package.json" with { type: "json" };

// Without BUILD_TARGET, the platform this runs on.
const target = process.env.BUILD_TARGET as Bun.Build.CompileTarget | undefined;
const outfile = process.env.BUILD_OUTFILE ?? "dist/spiffe-csi-driver";

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
