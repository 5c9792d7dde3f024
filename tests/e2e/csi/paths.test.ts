// Attacks on the paths the driver works on, by root in the pod directories: directories swapped
// with symbolic links while calls run, the same target named by several paths, and hostile
// files in the place of the kubelet's vol_data.json.
import { describe, expect, setDefaultTimeout, test } from "bun:test";
import {
  existsSync,
  lstatSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  renameSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { join, resolve } from "node:path";
import { status } from "@grpc/grpc-js";
import { parseMountInfo } from "../../../src/linux/mountinfo.ts";
import { talkToAgent } from "../../helpers/agent.ts";
import { assertPrivateMountNamespace } from "../../helpers/driver.ts";
import {
  DRIVER_NAME,
  mountsAt,
  mountsUnder,
  type PodVolume,
  podVolume,
  publishRequest,
  residentMemory,
  statsRequest,
  unpublishRequest,
} from "../../helpers/kubelet.ts";
import { freePort } from "../../helpers/port.ts";
import { testbed } from "../../helpers/testbed.ts";
import { waitFor } from "../../helpers/wait.ts";

assertPrivateMountNamespace();
// Generous for a loaded machine: covers every test and hook of this file.
setDefaultTimeout(120_000);

const bed = testbed("paths");
const { root, kubeletRoot } = bed;
const healthPort = freePort();
const driver = await bed.start(["--health-addr", `127.0.0.1:${healthPort}`]);
const { node } = bed.clients();

const internals: string[] = [];
const ok = (call: Promise<unknown>) =>
  call.then(
    () => status.OK,
    (error: { code: number; details: string }) => {
      if (error.code === status.INTERNAL) internals.push(error.details);
      return error.code;
    },
  );

const preparedVolume = (): PodVolume => bed.volume();

/** Every mount outside the kubelet root: mount id and place. */
function mountsOutside(): string[] {
  return parseMountInfo(readFileSync("/proc/self/mountinfo", "utf8"))
    .filter((mount) => !mount.mountPoint.startsWith(`${kubeletRoot}/`))
    .map((mount) => `${mount.mountId} ${mount.mountPoint}`)
    .sort();
}

/** A directory outside the kubelet root laid out like a volume of this driver's, with a record. */
function decoyVolume(name: string, volume: PodVolume): string {
  const dir = join(root, "outside", name);
  mkdirSync(join(dir, "mount"), { recursive: true });
  writeFileSync(
    join(dir, "vol_data.json"),
    JSON.stringify({ driverName: DRIVER_NAME, volumeHandle: volume.volumeId }),
  );
  return dir;
}

function mountTmpfs(path: string): void {
  const result = Bun.spawnSync(["mount", "-t", "tmpfs", "foreign", path]);
  if (result.exitCode !== 0) throw new Error(`mount tmpfs at ${path}: ${result.stderr}`);
}

describe("a symbolic link swapped in while calls run", () => {
  test("no mount, unmount or removal ever lands outside the kubelet root", async () => {
    // Four volumes, each attacked in its own way:
    // 1, 2: the volume directory swapped with a link to a decoy volume (a foreign tmpfs at its
    //       mount directory in 1, an empty directory in 2);
    // 3:    the mount directory swapped with a link to a foreign tmpfs;
    // 4:    the pod directory swapped with a link to a decoy pod.
    const volumes = Array.from({ length: 4 }, preparedVolume);
    const [v1, v2, v3, v4] = volumes as [PodVolume, PodVolume, PodVolume, PodVolume];
    const decoy1 = decoyVolume("volume-1", v1);
    mountTmpfs(join(decoy1, "mount"));
    writeFileSync(join(decoy1, "mount", "foreign-data"), "keep me");
    const decoy2 = decoyVolume("volume-2", v2);
    const foreign3 = join(root, "outside", "mount-3");
    mkdirSync(foreign3, { recursive: true });
    mountTmpfs(foreign3);
    const decoyPod = join(root, "outside", "pod-4");
    mkdirSync(join(decoyPod, "volumes", "kubernetes.io~csi", v4.volumeName, "mount"), {
      recursive: true,
    });
    const podDir4 = join(kubeletRoot, "pods", v4.podUid);
    const pairs: [string, string][] = [
      [v1.volumeDir, `${v1.volumeDir}.swap`],
      [v2.volumeDir, `${v2.volumeDir}.swap`],
      [v3.targetPath, `${v3.targetPath}.swap`],
      [podDir4, `${podDir4}.swap`],
    ];
    symlinkSync(decoy1, pairs[0]?.[1] ?? "");
    symlinkSync(decoy2, pairs[1]?.[1] ?? "");
    mkdirSync(v3.targetPath);
    symlinkSync(foreign3, pairs[2]?.[1] ?? "");
    symlinkSync(decoyPod, pairs[3]?.[1] ?? "");
    const before = mountsOutside();

    const attacker = Bun.spawn(
      [
        process.execPath,
        resolve(import.meta.dir, "../../helpers/exchanger.ts"),
        "60000",
        ...pairs.flat(),
      ],
      { stdin: "pipe", stdout: "pipe", stderr: "inherit" },
    );
    const codes = new Map<number, number>();
    const count = (code: number) => codes.set(code, (codes.get(code) ?? 0) + 1);
    try {
      // Rounds of publish, stats and unpublish of every volume, all at once, while the links
      // flip under them.
      for (let round = 0; round < 60; round++) {
        await Promise.all(
          volumes.map(async (volume) => {
            count(await ok(node.nodePublishVolume(publishRequest(volume))));
            count(await ok(node.nodeGetVolumeStats(statsRequest(volume))));
            count(await ok(node.nodeUnpublishVolume(unpublishRequest(volume))));
          }),
        );
      }
    } finally {
      attacker.stdin.end();
    }
    expect(await attacker.exited).toBe(0);
    // An answer may be an error, but never an unexpected one.
    expect(internals).toEqual([]);
    // The attacker may move a published target within its own directories (the kernel lets
    // root rename a mount point): that is the attacker's doing. The driver's own mounts,
    // unmounts and removals never left the kubelet root, as the mount table below shows.
    const swaps = Number((await new Response(attacker.stdout).text()).trim());
    console.log(
      `race: ${swaps} swaps; answers by code: ${JSON.stringify(Object.fromEntries(codes))}`,
    );
    expect(swaps).toBeGreaterThan(1000);
    // The attack was seen: some calls met a link and were refused.
    expect(
      (codes.get(status.INVALID_ARGUMENT) ?? 0) + (codes.get(status.FAILED_PRECONDITION) ?? 0),
    ).toBeGreaterThan(0);

    // Outside the kubelet root, the mount table is exactly as before: the foreign tmpfs mounts
    // are the same mounts, and nothing was bound on a decoy.
    expect(mountsOutside()).toEqual(before);
    expect(readdirSync(join(decoy1, "mount"))).toEqual(["foreign-data"]);
    expect(existsSync(join(decoy2, "mount"))).toBe(true);
    expect(existsSync(join(decoyPod, "volumes", "kubernetes.io~csi", v4.volumeName, "mount"))).toBe(
      true,
    );
    expect(mountsUnder(join(root, "outside"))).toBe(2);

    // With the names back in place, the kubelet's last unpublish leaves nothing.
    for (const [name, link] of pairs) {
      if (!lstatSync(name, { throwIfNoEntry: false })?.isSymbolicLink()) continue;
      // A published target the attacker moved aside and could not move back: the attacker's
      // leftovers, cleared as the attacker would.
      Bun.spawnSync(["umount", "--lazy", link]);
      renameSync(name, `${name}.tmp`);
      renameSync(link, name);
      renameSync(`${name}.tmp`, link);
    }
    for (const volume of volumes) {
      expect(await ok(node.nodeUnpublishVolume(unpublishRequest(volume)))).toBe(status.OK);
      expect(mountsAt(volume.targetPath)).toBe(0);
      expect(existsSync(volume.targetPath)).toBe(false);
    }
    expect(mountsUnder(kubeletRoot)).toBe(0);
    Bun.spawnSync(["umount", join(decoy1, "mount")]);
    Bun.spawnSync(["umount", foreign3]);
  }, 180_000);
});

describe("one volume, several names", () => {
  test("concurrent publishes through path aliases make one mount; the gauge counts volumes", async () => {
    // The same targets, named as given, through /proc/self/root, and through the driver's
    // /proc/<pid>/root: three spellings of each of 20 targets, published and unpublished at once.
    const volumes = Array.from({ length: 20 }, preparedVolume);
    const aliases = (volume: PodVolume) => [
      volume,
      { ...volume, targetPath: `/proc/self/root${volume.targetPath}` },
      { ...volume, targetPath: `/proc/${driver.proc.pid}/root${volume.targetPath}` },
    ];
    const published = await Promise.all(
      volumes.flatMap(aliases).map((alias) => ok(node.nodePublishVolume(publishRequest(alias)))),
    );
    expect(published.every((code) => code === status.OK)).toBe(true);
    for (const volume of volumes) expect(mountsAt(volume.targetPath)).toBe(1);
    for (const volume of volumes) {
      expect(await talkToAgent(volume.targetPath)).toBe("pong ping");
    }
    expect(await publishedGaugeReaching(20)).toBe(20);

    const unpublished = await Promise.all(
      volumes
        .flatMap(aliases)
        .map((alias) => ok(node.nodeUnpublishVolume(unpublishRequest(alias)))),
    );
    expect(unpublished.every((code) => code === status.OK)).toBe(true);
    for (const volume of volumes) {
      expect(mountsAt(volume.targetPath)).toBe(0);
      expect(existsSync(volume.targetPath)).toBe(false);
    }
    expect(await publishedGaugeReaching(0)).toBe(0);
  }, 120_000);
});

/** The gauge once it shows `expected` (/metrics is recomputed at most once a second). */
async function publishedGaugeReaching(expected: number): Promise<number> {
  let last: number | undefined;
  return waitFor(
    () => `the published-volumes gauge to show ${expected} (last: ${last})`,
    async () => {
      last = await publishedGauge();
      return last === expected && last;
    },
  );
}

async function publishedGauge(): Promise<number> {
  const text = await (await fetch(`http://127.0.0.1:${healthPort}/metrics`)).text();
  const match = /^spiffe_csi_published_volumes (\d+)$/m.exec(text);
  if (!match?.[1]) throw new Error(`no published-volumes gauge in:\n${text}`);
  return Number(match[1]);
}

describe("hostile files in the place of vol_data.json", () => {
  // Each answers at once as "no record": the publish goes on as for a volume the kubelet left
  // no record for, and other calls are not held up.
  const cases: [string, (path: string) => void][] = [
    ["a FIFO nobody writes to", (path) => Bun.spawnSync(["mkfifo", path])],
    ["a link to /dev/zero", (path) => symlinkSync("/dev/zero", path)],
    ["a link to a valid record elsewhere", (path) => symlinkSync(join(root, "record.json"), path)],
    ["a 100 MB file", (path) => writeFileSync(path, Buffer.alloc(100 * 1024 * 1024, 0x20))],
    ["a directory", (path) => mkdirSync(path)],
    ["a character device", (path) => Bun.spawnSync(["mknod", path, "c", "1", "3"])],
  ];

  writeFileSync(
    join(root, "record.json"),
    JSON.stringify({ driverName: "other.example.com", volumeHandle: "other" }),
  );

  test.each(cases)(
    "%s: no record, answered promptly",
    async (_, make) => {
      const volume = podVolume(kubeletRoot);
      mkdirSync(volume.volumeDir, { recursive: true });
      const record = join(volume.volumeDir, "vol_data.json");
      make(record);
      const rssBefore = residentMemory(driver.proc.pid).rssMb;
      expect(await ok(node.nodePublishVolume(publishRequest(volume)))).toBe(status.OK);
      expect(mountsAt(volume.targetPath)).toBe(1);
      // Memory did not take the file in.
      expect(residentMemory(driver.proc.pid).rssMb - rssBefore).toBeLessThan(50);
      expect(await ok(node.nodeUnpublishVolume(unpublishRequest(volume)))).toBe(status.OK);
      expect(existsSync(volume.targetPath)).toBe(false);
      rmSync(record, { recursive: true, force: true });
    },
    60_000,
  );

  test("a FIFO does not hold up other volumes' calls", async () => {
    const blocked = podVolume(kubeletRoot);
    mkdirSync(blocked.volumeDir, { recursive: true });
    Bun.spawnSync(["mkfifo", join(blocked.volumeDir, "vol_data.json")]);
    const other = preparedVolume();
    const [first, second] = await Promise.all([
      ok(node.nodePublishVolume(publishRequest(blocked))),
      ok(node.nodePublishVolume(publishRequest(other))),
    ]);
    expect([first, second]).toEqual([status.OK, status.OK]);
    for (const volume of [blocked, other]) {
      expect(await ok(node.nodeUnpublishVolume(unpublishRequest(volume)))).toBe(status.OK);
    }
  }, 60_000);
});
