// How a volume's mount is removed. A bind this driver process made is unmounted through the
// directory it covers: plain `umount` (no --lazy), which libmount runs without reading the mount
// table. Anything else (a mount in use, one made before the driver started, a kubelet root on a
// file system `umount` cannot name from statfs) is detached lazily, through a descriptor.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import {
  closeSync,
  existsSync,
  mkdirSync,
  openSync,
  readFileSync,
  readSync,
  rmdirSync,
  writeFileSync,
} from "node:fs";
import { join } from "node:path";
import { openDirectory } from "../../../src/linux/descriptors.ts";
import { CommandMounter } from "../../../src/linux/mounter.ts";
import { clients, type DriverProcess } from "../../helpers/driver.ts";
import {
  mountsAt,
  preparedVolume,
  publishRequest,
  unpublishRequest,
} from "../../helpers/kubelet.ts";
import { mountTestbed } from "../../helpers/testbed.ts";

const bed = mountTestbed("unmount");
const { root, socketDir, kubeletRoot } = bed;
writeFileSync(join(socketDir, "bundle.pem"), "trust bundle");
// The kubelet root on tmpfs: a file system every `umount` names from statfs.
// A kubelet root on overlay, which libmount has no statfs name for.
const overlayRoot = join(root, "overlay");
const overlayKubeletRoot = join(overlayRoot, "kubelet");

function run(...argv: string[]): void {
  const result = Bun.spawnSync(argv, { stderr: "pipe" });
  if (result.exitCode !== 0) throw new Error(`${argv.join(" ")}: ${result.stderr.toString()}`);
}

mkdirSync(kubeletRoot);
run("mount", "-t", "tmpfs", "unmount-test", kubeletRoot);
for (const dir of ["lower", "upper", "work", "kubelet"]) {
  mkdirSync(join(overlayRoot, dir), { recursive: true });
}
run(
  "mount",
  "-t",
  "overlay",
  "unmount-test",
  "-o",
  `lowerdir=${join(overlayRoot, "lower")},upperdir=${join(overlayRoot, "upper")},workdir=${join(overlayRoot, "work")}`,
  overlayKubeletRoot,
);

// A stand-in for `umount` that records each run (its pid and arguments) and runs the real one
// with libmount's debug output on, which says whether it read the mount table.
const realUmount = Bun.which("umount") ?? "/usr/bin/umount";
const runsLog = join(root, "umount-runs.log");
const debugLog = join(root, "umount-debug.log");
const env = {
  PATH: bed.standIn(
    "umount",
    `echo "$$ $*" >> ${runsLog}\nLIBMOUNT_DEBUG=cxt exec ${realUmount} "$@" 2>> ${debugLog}`,
  ),
};

interface UmountRun {
  argv: string;
  debug: string[];
}

/** The runs of `umount` since the last call, each with its libmount debug lines. */
let seenRuns = 0;
function umountRuns(): UmountRun[] {
  const lines = existsSync(runsLog) ? readFileSync(runsLog, "utf8").trim().split("\n") : [];
  const debug = existsSync(debugLog) ? readFileSync(debugLog, "utf8").split("\n") : [];
  const runs = lines.slice(seenRuns).map((line) => {
    const pid = line.slice(0, line.indexOf(" "));
    return {
      argv: line.slice(pid.length + 1),
      debug: debug.filter((entry) => entry.startsWith(`${pid}: `)),
    };
  });
  seenRuns = lines.length;
  return runs;
}

/** No mount table read: libmount said so, and never searched one. */
function readNoMountTable(run: UmountRun): boolean {
  return (
    run.debug.some((line) => line.includes("mountinfo unnecessary")) &&
    !run.debug.some((line) => line.includes("lookup by mountinfo"))
  );
}

let driver: DriverProcess;
let node: ReturnType<typeof clients>["node"];

async function driverAt(name: string) {
  const csiSocketPath = join(root, name, "csi.sock");
  const started = await bed.start([], { csiSocketPath, env });
  return { driver: started, node: clients(csiSocketPath).node };
}

beforeAll(async () => {
  ({ driver, node } = await driverAt("driver"));
}, 60_000);

bed.beforeCleanup(async () => {
  for (const stderr of await bed.stopDrivers()) expect(stderr).not.toContain("code=INTERNAL");
  run("umount", overlayKubeletRoot);
  run("umount", kubeletRoot);
});

const FAST = "--internal-only --no-mtab /proc/self/fd/3";
const LAZY = "--no-canonicalize --lazy /proc/self/fd/3";

/** Unpublishes `volume` through `node`; the umount runs it took. Its target is no mount after. */
async function unpublishRuns(volume: ReturnType<typeof preparedVolume>): Promise<UmountRun[]> {
  umountRuns();
  await node.nodeUnpublishVolume(unpublishRequest(volume));
  const runs = umountRuns();
  expect(mountsAt(volume.targetPath)).toBe(0);
  return runs;
}

describe("unpublishing a volume this driver published", () => {
  test("runs umount without --lazy, which reads no mount table; mount and directory are gone", async () => {
    const volume = preparedVolume(kubeletRoot);
    await node.nodePublishVolume(publishRequest(volume));
    const runs = await unpublishRuns(volume);
    expect(runs.map((run) => run.argv)).toEqual([FAST]);
    expect(readNoMountTable(runs[0] as UmountRun)).toBe(true);
    expect(existsSync(volume.targetPath)).toBe(false);
  });

  test("after a re-publish and a repaired stale mount, still without --lazy", async () => {
    const volume = preparedVolume(kubeletRoot);
    await node.nodePublishVolume(publishRequest(volume));
    // A kubelet restart: nothing new is mounted.
    await node.nodePublishVolume(publishRequest(volume));
    expect(mountsAt(volume.targetPath)).toBe(1);
    expect((await unpublishRuns(volume)).map((run) => run.argv)).toEqual([FAST]);
  });

  test("in use: detached lazily after the plain umount is refused; an open file stays readable", async () => {
    const volume = preparedVolume(kubeletRoot);
    await node.nodePublishVolume(publishRequest(volume));
    const file = openSync(join(volume.targetPath, "bundle.pem"), "r");
    try {
      const runs = await unpublishRuns(volume);
      expect(runs.map((run) => run.argv)).toEqual([FAST, LAZY]);
      expect(runs[0]?.debug.join("\n")).toContain("umount(2) failed");
      expect(existsSync(volume.targetPath)).toBe(false);
      const buffer = Buffer.alloc(64);
      const read = readSync(file, buffer, 0, buffer.length, 0);
      expect(buffer.toString("utf8", 0, read)).toBe("trust bundle");
    } finally {
      closeSync(file);
    }
  });

  test("published by an earlier driver process: detached lazily through the mount's root", async () => {
    const earlier = await driverAt("earlier");
    const volume = preparedVolume(kubeletRoot);
    await earlier.node.nodePublishVolume(publishRequest(volume));
    earlier.node.close();
    await earlier.driver.stop();
    expect((await unpublishRuns(volume)).map((run) => run.argv)).toEqual([LAZY]);
    expect(existsSync(volume.targetPath)).toBe(false);
  });

  test("on a kubelet root umount cannot name from statfs (overlay): detached lazily", async () => {
    const volume = preparedVolume(overlayKubeletRoot);
    await node.nodePublishVolume(publishRequest(volume));
    expect((await unpublishRuns(volume)).map((run) => run.argv)).toEqual([LAZY]);
    expect(existsSync(volume.targetPath)).toBe(false);
  });

  test("the driver keeps no descriptor of an unpublished volume's directory", async () => {
    const volume = preparedVolume(kubeletRoot);
    await node.nodePublishVolume(publishRequest(volume));
    const held = () => descriptorsOn(driver.proc.pid, volume.targetPath);
    expect(held()).toBe(1);
    await node.nodeUnpublishVolume(unpublishRequest(volume));
    expect(held()).toBe(0);
  });
});

/** How many of the process's descriptors name `path`, or `path` removed. */
function descriptorsOn(pid: number, path: string): number {
  const listed = Bun.spawnSync(["find", `/proc/${pid}/fd`, "-mindepth", "1", "-printf", "%l\n"]);
  return listed.stdout
    .toString()
    .split("\n")
    .filter((target) => target === path || target === `${path} (deleted)`).length;
}

describe("the mounter's directories below its binds", () => {
  // The mounter alone, with the real mount and the recording umount, and room for two.
  const recordingUmount = Bun.which("umount", { PATH: env.PATH }) as string;
  const mounter = new CommandMounter("mount", recordingUmount, 30_000, 2);
  const base = join(kubeletRoot, "mounter");
  mkdirSync(base);
  const source = openDirectory(socketDir);
  afterAll(() => source.close(), 60_000);

  async function bound(name: string): Promise<string> {
    const target = join(base, name);
    mkdirSync(target);
    using handle = openDirectory(target);
    await mounter.bindMount({ fd: source.fd, path: socketDir }, { fd: handle.fd, path: target });
    return target;
  }

  async function unmounted(target: string): Promise<string> {
    const handle = openDirectory(target);
    umountRuns();
    try {
      await mounter.unmount({ fd: handle.fd, path: target, close: () => handle.close() });
    } finally {
      handle.close();
    }
    expect(mountsAt(target)).toBe(0);
    rmdirSync(target);
    return umountRuns()
      .map((run) => run.argv)
      .join(", ");
  }

  test("past its room the oldest is dropped, and that mount is unmounted lazily", async () => {
    const [first, second, third] = [await bound("a"), await bound("b"), await bound("c")];
    expect(await unmounted(first)).toBe(LAZY);
    expect(await unmounted(second)).toBe(FAST);
    expect(await unmounted(third)).toBe(FAST);
  });

  test("a directory whose mount went another way is dropped first", async () => {
    const gone = await bound("d");
    const kept = await bound("e");
    // Unmounted and removed behind the mounter's back.
    run(realUmount, gone);
    rmdirSync(gone);
    const third = await bound("f");
    expect(await unmounted(kept)).toBe(FAST);
    expect(await unmounted(third)).toBe(FAST);
  });

  test("without the caller's leave to close its descriptor, lazily", async () => {
    const target = await bound("g");
    const handle = openDirectory(target);
    umountRuns();
    try {
      await mounter.unmount({ fd: handle.fd, path: target });
    } finally {
      handle.close();
    }
    expect(umountRuns().map((run) => run.argv)).toEqual([LAZY]);
    expect(mountsAt(target)).toBe(0);
    rmdirSync(target);
  });
});
