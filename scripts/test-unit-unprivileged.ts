// Runs the unit tests as an ordinary user (uid 65534, nobody) and outside any private mount
// namespace, so that a unit test that needs root or a mount fails here: such a test belongs in
// tests/e2e. Run as root (as `npm test` and CI are), it drops to that user with setpriv; run as
// anyone else, it runs the tests as they are.
//
// That user must be able to read the checkout. Where it cannot (a clone under /root), the tests
// run from a copy in a temporary directory, readable by all: the files git knows (tracked, or
// untracked and not ignored), and node_modules as hard links where the file system allows and
// that user can read them, copied where not.
import { chmodSync, chownSync, mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";

const NOBODY = 65534;
const repo = resolve(import.meta.dir, "..");
const asNobody = ["setpriv", `--reuid=${NOBODY}`, `--regid=${NOBODY}`, "--clear-groups"];

function run(argv: string[], cwd: string, env: Record<string, string | undefined> = process.env) {
  return Bun.spawnSync(argv, { cwd, env, stdio: ["ignore", "inherit", "inherit"] }).exitCode;
}

function readableByNobody(dir: string): boolean {
  const bun = join(dir, "node_modules/.bin/bun");
  const probe = ["test", "-r", join(dir, "package.json"), "-a", "-x", bun];
  return Bun.spawnSync([...asNobody, ...probe]).exitCode === 0;
}

/** A copy of the checkout that any user may read; the caller removes it. */
function readableCopy(into: string): string {
  const copy = join(into, "repo");
  mkdirSync(copy);
  const listed = Bun.spawnSync(["git", "ls-files", "-z", "-co", "--exclude-standard"], {
    cwd: repo,
  });
  if (listed.exitCode !== 0) throw new Error(`git ls-files: ${listed.stderr}`);
  const files = listed.stdout
    .toString()
    .split("\0")
    .filter((file) => file !== "" && file !== "node_modules" && !file.startsWith("dist/"));
  const tar = Bun.spawnSync(["sh", "-c", 'tar -cf - --null -T - | tar -xf - -C "$1"', "sh", copy], {
    cwd: repo,
    stdin: Buffer.from(files.join("\0")),
    stderr: "pipe",
  });
  if (tar.exitCode !== 0) throw new Error(`copying the checkout: ${tar.stderr}`);
  // A checkout made under a strict umask: the copy is readable whatever its files' modes.
  if (run(["chmod", "-R", "a+rX", copy], repo) !== 0) throw new Error("opening up the copy");
  // Hard links share the files' modes: kept only where that user can read them already.
  const modules = join(repo, "node_modules");
  if (run(["cp", "-al", modules, copy], repo) !== 0 || !readableByNobody(copy)) {
    rmSync(join(copy, "node_modules"), { recursive: true, force: true });
    if (run(["cp", "-a", modules, copy], repo) !== 0) throw new Error("copying node_modules");
    const opened = run(["chmod", "-R", "a+rX", join(copy, "node_modules")], repo);
    if (opened !== 0) throw new Error("opening up node_modules");
  }
  return copy;
}

if (process.getuid?.() !== 0) {
  process.exit(run(["node_modules/.bin/bun", "test", "tests/unit"], repo));
}

const scratch = mkdtempSync(join(tmpdir(), "spiffe-csi-unit-"));
let status = 1;
try {
  chmodSync(scratch, 0o755);
  const home = join(scratch, "home");
  mkdirSync(home);
  chownSync(home, NOBODY, NOBODY);
  const dir = readableByNobody(repo) ? repo : readableCopy(scratch);
  const bun = join(dir, "node_modules/.bin/bun");
  status = run([...asNobody, bun, "test", "tests/unit"], dir, { ...process.env, HOME: home });
} finally {
  rmSync(scratch, { recursive: true, force: true });
}
process.exit(status);
