// The container image: the real Containerfile, built with buildah against local stand-ins for its
// base images (made from the Debian packages those images are made of), run with podman, and
// driven from the host over the CSI socket in a shared volume.
import { afterAll, beforeAll, expect, test } from "bun:test";
import {
  chmodSync,
  copyFileSync,
  existsSync,
  lstatSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  renameSync,
  rmdirSync,
  statSync,
  symlinkSync,
} from "node:fs";
import { rm } from "node:fs/promises";
import { join, resolve } from "node:path";
import { parseMountInfo } from "../../src/linux/mountinfo.ts";
import { startAgent, talkToAgent } from "../helpers/agent.ts";
import { assertPrivateMountNamespace, clients, tempDir } from "../helpers/driver.ts";
import {
  mountsAt,
  podVolume,
  prepareVolume,
  publishRequest,
  unpublishRequest,
} from "../helpers/kubelet.ts";
import { waitFor } from "../helpers/wait.ts";

assertPrivateMountNamespace();

const repo = resolve(import.meta.dir, "../..");
const arch = process.arch === "arm64" ? "arm64" : "amd64";
const root = tempDir("image");
const storage = [
  "--root",
  join(root, "storage"),
  "--runroot",
  join(root, "run"),
  "--storage-driver",
  "vfs",
];
const podman = [
  "podman",
  ...storage,
  "--runtime",
  "runc",
  "--cgroup-manager",
  "cgroupfs",
  "--events-backend",
  "file",
];
const buildah = ["buildah", ...storage];
const IMAGE = "localhost/spiffe-csi-driver:test";
const packageVersion = (
  JSON.parse(readFileSync(join(repo, "package.json"), "utf8")) as { version: string }
).version;

function run(argv: string[], options: { cwd?: string; allowFailure?: boolean } = {}) {
  const result = Bun.spawnSync(argv, {
    cwd: options.cwd ?? root,
    stdout: "pipe",
    stderr: "pipe",
    env: { ...process.env, DEBIAN_FRONTEND: "noninteractive" },
  });
  const out = {
    code: result.exitCode,
    stdout: result.stdout.toString(),
    stderr: result.stderr.toString(),
  };
  if (out.code !== 0 && !options.allowFailure) {
    throw new Error(`${argv.join(" ")} exited ${out.code}:\n${out.stderr.slice(-3000)}`);
  }
  return out;
}

/** podman, buildah and runc, from Debian's packages, when missing. */
function ensureTools(): void {
  if (["podman", "buildah", "runc"].every((tool) => Bun.which(tool))) return;
  console.log("image: installing podman, buildah and runc");
  run(["apt-get", "update", "-qq"]);
  run(["apt-get", "install", "-y", "-qq", "podman", "buildah", "runc"]);
}

/** A root file system made of Debian packages, as a base image is. */
const other = arch === "amd64" ? "arm64" : "amd64";
const TRIPLETS = { amd64: "x86_64-linux-gnu", arm64: "aarch64-linux-gnu" } as const;
// ELF e_machine: EM_X86_64 and EM_AARCH64.
const MACHINES = { amd64: 62, arm64: 183 } as const;

/** apt-get for another architecture, with package lists of its own (the host's stay as they are). */
function aptFor(target: "amd64" | "arm64"): string[] {
  if (target === arch) return ["apt-get"];
  const state = join(root, `apt-${target}`);
  const options = [
    "-o",
    `APT::Architecture=${target}`,
    "-o",
    `APT::Architectures::=${target}`,
    "-o",
    `Dir::State::Lists=${join(state, "lists")}`,
    "-o",
    `Dir::Cache=${join(state, "cache")}`,
    "-o",
    "Dir::State::status=/dev/null",
  ];
  if (!existsSync(state)) {
    mkdirSync(join(state, "lists", "partial"), { recursive: true });
    mkdirSync(join(state, "cache", "archives", "partial"), { recursive: true });
    run(["apt-get", ...options, "update", "-qq"]);
  }
  return ["apt-get", ...options];
}

function rootfs(
  name: string,
  packages: string[],
  mergedUsr: boolean,
  target: "amd64" | "arm64" = arch,
): string {
  const debs = join(root, `debs-${target}`);
  mkdirSync(debs, { recursive: true });
  run([...aptFor(target), "download", ...packages], { cwd: debs });
  const dir = join(root, "rootfs", `${name}-${target}`);
  mkdirSync(dir, { recursive: true });
  for (const deb of readdirSync(debs).filter((f) => packages.some((p) => f.startsWith(`${p}_`)))) {
    run(["dpkg-deb", "-x", join(debs, deb), dir]);
  }
  if (mergedUsr) {
    // Debian 12 images have /bin, /sbin and /lib as links into /usr.
    for (const top of ["bin", "sbin", "lib"]) {
      const from = join(dir, top);
      mkdirSync(join(dir, "usr", top), { recursive: true });
      if (existsSync(from)) {
        mergeInto(from, join(dir, "usr", top));
        rmdirSync(from);
      }
      symlinkSync(`usr/${top}`, from);
    }
  }
  for (const needed of ["tmp", "root", "etc"]) mkdirSync(join(dir, needed), { recursive: true });
  chmodSync(join(dir, "tmp"), 0o1777);
  return dir;
}

/** Moves everything in `from` into `to`, merging directories both have; leaves `from` empty. */
function mergeInto(from: string, to: string): void {
  for (const entry of readdirSync(from)) {
    const source = join(from, entry);
    const target = join(to, entry);
    if (existsSync(target) && lstatSync(target).isDirectory() && lstatSync(source).isDirectory()) {
      mergeInto(source, target);
      rmdirSync(source);
    } else {
      renameSync(source, target);
    }
  }
}

function commit(dir: string, image: string, env: string[] = [], target = arch): void {
  const container = run([...buildah, "from", "scratch"]).stdout.trim();
  run([...buildah, "copy", container, `${dir}/`, "/"]);
  for (const pair of env) run([...buildah, "config", "--env", pair, container]);
  run([...buildah, "config", "--arch", target, "--os", "linux", container]);
  run([...buildah, "commit", "--rm", container, image]);
}

/** Stand-ins of the images made of Debian packages: the base and util-linux ones, for `target`. */
function targetStandIns(target: "amd64" | "arm64") {
  const suffix = target === arch ? "" : `-${target}`;
  const images = {
    UTIL_LINUX_IMAGE: `localhost/stand-in/debian:12-slim${suffix}`,
    BASE_IMAGE: `localhost/stand-in/distroless-base:debian12${suffix}`,
  };
  // gcr.io/distroless/base-debian12 is made of these.
  commit(
    rootfs(
      "base",
      ["libc6", "libssl3", "ca-certificates", "tzdata", "base-files", "netbase"],
      false,
      target,
    ),
    images.BASE_IMAGE,
    [],
    target,
  );
  // debian:12-slim, as far as the Containerfile takes from it.
  commit(
    rootfs(
      "debian",
      ["libc6", "mount", "libmount1", "libblkid1", "libselinux1", "libpcre2-8-0"],
      true,
      target,
    ),
    images.UTIL_LINUX_IMAGE,
    [],
    target,
  );
  return images;
}

/** The real Containerfile, built with buildah for `target` against the stand-ins. */
function buildImage(
  target: "amd64" | "arm64",
  standIns: Record<string, string>,
  tag: string,
): number {
  const started = performance.now();
  run(
    [
      ...buildah,
      "build",
      "--isolation",
      "chroot",
      "--network",
      "host",
      "--platform",
      `linux/${target}`,
      ...Object.entries(standIns).flatMap(([name, image]) => ["--build-arg", `${name}=${image}`]),
      "-t",
      tag,
      "-f",
      "Containerfile",
      ".",
    ],
    { cwd: repo },
  );
  return (performance.now() - started) / 1000;
}

/** Copies the image's files out (through a buildah mount: it need not run here) and lists them. */
function imageFiles(image: string, into: string): string[] {
  mkdirSync(into, { recursive: true });
  const mount = run([...buildah, "from", image]).stdout.trim();
  try {
    const path = run([...buildah, "mount", mount]).stdout.trim();
    run(["cp", "-a", `${path}/.`, into]);
    run([...buildah, "umount", mount]);
  } finally {
    run([...buildah, "rm", mount], { allowFailure: true });
  }
  return readdirSync(into, { recursive: true }).map(String);
}

const running: string[] = [];
const kubeletDir = join(root, "kubelet");
const pluginDir = join(root, "plugin");
const agentDir = join(root, "agent-sockets");

let standIns: Record<string, string> = {};

beforeAll(() => {
  ensureTools();
  run(["apt-get", "update", "-qq"]);
  standIns = { ...targetStandIns(arch), BUN_IMAGE: "localhost/stand-in/bun:1.4.4-debian" };
  // oven/bun:1.4.4-debian: Debian with bun in /usr/local/bin.
  const bun = rootfs("bun", ["libc6", "ca-certificates"], true);
  mkdirSync(join(bun, "usr/local/bin"), { recursive: true });
  copyFileSync(process.execPath, join(bun, "usr/local/bin/bun"));
  chmodSync(join(bun, "usr/local/bin/bun"), 0o755);
  // The builder reaches the npm registry through this machine's network, which may sit behind
  // a TLS proxy with a certificate authority of its own: the stand-in trusts what the host does.
  const hostCa = process.env.NODE_EXTRA_CA_CERTS ?? "/etc/ssl/certs/ca-certificates.crt";
  mkdirSync(join(bun, "etc/ssl/certs"), { recursive: true });
  copyFileSync(hostCa, join(bun, "etc/ssl/certs/host-ca.crt"));
  commit(bun, standIns.BUN_IMAGE as string, ["NODE_EXTRA_CA_CERTS=/etc/ssl/certs/host-ca.crt"]);
}, 600_000);

/** Mount points below the test's directory, in mount order (children after parents). */
function mountsBelowRoot(): string[] {
  return parseMountInfo(readFileSync("/proc/self/mountinfo", "utf8"))
    .filter((m) => m.mountPoint.startsWith(`${root}/`))
    .map((m) => m.mountPoint);
}

// Removing the storage (every layer a full copy of its files, with the vfs driver) takes a while
// on a busy machine. Clean-up never fails the suite: what it cannot finish in time is reported
// and left in the temporary directory.
const REMOVAL_MS = 300_000;

afterAll(async () => {
  for (const name of running) run([...podman, "rm", "-f", name], { allowFailure: true });
  // Nothing of the test's may stay mounted before its files go.
  for (const mount of mountsBelowRoot().reverse()) {
    run(["umount", "-l", mount], { allowFailure: true });
  }
  const left = mountsBelowRoot();
  if (left.length > 0) {
    console.warn(`image: ${root} left in place: still mounted: ${left.join(", ")}`);
    return;
  }
  const removal = rm(root, { recursive: true, force: true }).then(
    () => "removed",
    (error: Error) => `not removed: ${error.message}`,
  );
  const outcome = await Promise.race([removal, Bun.sleep(REMOVAL_MS).then(() => "still going")]);
  if (outcome !== "removed") console.warn(`image: ${root} ${outcome}`);
}, REMOVAL_MS + 120_000);

test("the Containerfile builds with buildah against the stand-ins", () => {
  const seconds = buildImage(arch, standIns, IMAGE);
  const labels = JSON.parse(
    run([...podman, "image", "inspect", "--format", "{{json .Labels}}", IMAGE]).stdout,
  );
  expect(labels["org.opencontainers.image.source"]).toBeString();
  expect(labels["org.opencontainers.image.version"]).toBe(packageVersion);
  expect(labels["org.opencontainers.image.licenses"]).toBe("Apache-2.0");
  console.log(`image: built ${IMAGE} in ${seconds.toFixed(1)} s`);
}, 600_000);

test("the image serves CSI with the reference's DaemonSet args; publish mounts where the host sees it", async () => {
  // The kubelet's directory must be a shared mount, as Bidirectional propagation needs.
  mkdirSync(kubeletDir, { recursive: true });
  run(["mount", "-t", "tmpfs", "image-kubelet", kubeletDir]);
  run(["mount", "--make-shared", kubeletDir]);
  mkdirSync(pluginDir);
  mkdirSync(agentDir);
  const agent = startAgent(agentDir);
  const name = "spiffe-csi-image-test";
  running.push(name);
  run([
    ...podman,
    "run",
    "-d",
    "--name",
    name,
    "--privileged",
    "--network",
    "none",
    "--read-only",
    "--read-only-tmpfs=false",
    "--ulimit",
    "nofile=20000:20000",
    "--ulimit",
    "nproc=32768:32768",
    "-e",
    "MY_NODE_NAME=image-node",
    "-v",
    `${agentDir}:/spire-agent-socket:ro`,
    "-v",
    `${pluginDir}:/spiffe-csi`,
    "-v",
    `${kubeletDir}:${kubeletDir}:rshared`,
    IMAGE,
    "-workload-api-socket-dir",
    "/spire-agent-socket",
    "-csi-socket-path",
    "/spiffe-csi/csi.sock",
  ]);
  try {
    const socket = join(pluginDir, "csi.sock");
    await waitFor(
      () => `a socket: ${run([...podman, "logs", name], { allowFailure: true }).stderr}`,
      () => existsSync(socket),
    );
    const { identity, node } = clients(socket);
    expect((await identity.getPluginInfo({})).name).toBe("csi.spiffe.io");
    const volume = podVolume(kubeletDir);
    prepareVolume(volume);
    await node.nodePublishVolume(publishRequest(volume));
    // The mount made in the container reached the host, and leads to the agent.
    expect(mountsAt(volume.targetPath)).toBe(1);
    expect(await talkToAgent(volume.targetPath)).toBe("pong ping");
    await node.nodeUnpublishVolume(unpublishRequest(volume));
    expect(mountsAt(volume.targetPath)).toBe(0);
    expect(existsSync(volume.targetPath)).toBe(false);

    run([...podman, "stop", "-t", "10", name]);
    const exitCode = run([
      ...podman,
      "inspect",
      "--format",
      "{{.State.ExitCode}}",
      name,
    ]).stdout.trim();
    const logs = run([...podman, "logs", name], { allowFailure: true });
    expect(`exit ${exitCode}\n${logs.stdout}${logs.stderr}`).toStartWith("exit 0\n");
    expect(existsSync(socket)).toBe(false);
  } finally {
    agent.stop(true);
  }
}, 300_000);

test("the image has no shell and no package manager", () => {
  const shell = run(
    [...podman, "run", "--rm", "--network", "none", "--entrypoint", "/bin/sh", IMAGE, "-c", "true"],
    { allowFailure: true },
  );
  expect(shell.code).not.toBe(0);
  const container = run([...podman, "create", IMAGE]).stdout.trim();
  const listing = run([
    "sh",
    "-c",
    `${podman.join(" ")} export ${container} | tar -t`,
  ]).stdout.split("\n");
  run([...podman, "rm", container]);
  for (const path of [
    "bin/sh",
    "bin/bash",
    "usr/bin/sh",
    "usr/bin/bash",
    "usr/bin/apt",
    "usr/bin/apt-get",
    "usr/bin/dpkg",
  ]) {
    expect(listing).not.toContain(path);
  }
  expect(listing).toContain("usr/bin/mount");
  expect(listing).toContain("spiffe-csi-driver");
  const size = Number(
    run([...podman, "image", "inspect", "--format", "{{.Size}}", IMAGE]).stdout.trim(),
  );
  console.log(
    `image: ${(size / 2 ** 20).toFixed(1)} MiB, ${listing.filter(Boolean).length} entries, no shell, no package manager`,
  );
}, 300_000);

test(`the Containerfile builds for ${other} too: its executables and libraries are ${other}'s`, () => {
  const images = targetStandIns(other);
  // The build stage runs on the build machine's platform (FROM --platform=$BUILDPLATFORM), as
  // docker buildx runs it. buildah 1.28 (Debian 12's) sets BUILDPLATFORM to the target's
  // instead, so the builder stand-in is also tagged for the target: with chroot isolation its
  // (this machine's) bun still runs natively, and compiles for the target as buildx would.
  const crossBuilder = `${standIns.BUN_IMAGE}-${other}`;
  run([...buildah, "tag", standIns.BUN_IMAGE as string, `${crossBuilder}-tmp`]);
  const builder = run([...buildah, "from", `${crossBuilder}-tmp`]).stdout.trim();
  run([...buildah, "config", "--arch", other, builder]);
  run([...buildah, "commit", "--rm", builder, crossBuilder]);
  const tag = `localhost/spiffe-csi-driver:test-${other}`;
  const seconds = buildImage(other, { ...images, BUN_IMAGE: crossBuilder }, tag);
  expect(
    run([...podman, "image", "inspect", "--format", "{{.Architecture}}", tag]).stdout.trim(),
  ).toBe(other);
  const files = join(root, `files-${other}`);
  const listing = imageFiles(tag, files);
  const machine = (path: string) => {
    const header = readFileSync(join(files, path)).subarray(0, 20);
    expect([...header.subarray(0, 4)]).toEqual([0x7f, 0x45, 0x4c, 0x46]);
    return header.readUInt16LE(18);
  };
  for (const path of ["spiffe-csi-driver", "usr/bin/mount", "usr/bin/umount"]) {
    expect(`${path}: ${machine(path)}`).toBe(`${path}: ${MACHINES[other]}`);
  }
  for (const library of ["libmount.so.1", "libblkid.so.1", "libselinux.so.1", "libpcre2-8.so.0"]) {
    expect(listing).toContain(`usr/lib/${TRIPLETS[other]}/${library}`);
  }
  console.log(
    `image: built ${tag} in ${seconds.toFixed(1)} s; executable ${(statSync(join(files, "spiffe-csi-driver")).size / 2 ** 20).toFixed(1)} MiB, ELF machine ${MACHINES[other]}`,
  );
}, 600_000);
