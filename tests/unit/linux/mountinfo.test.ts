import { afterAll, describe, expect, test } from "bun:test";
import {
  closeSync,
  constants,
  openSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  rmSync,
  writeFileSync,
} from "node:fs";
import { join } from "node:path";
import { O_PATH } from "../../../src/linux/descriptors.ts";
import { isLocalFileSystem, MountGate, UntrustedMountError } from "../../../src/linux/gate.ts";
import {
  MountTableReader,
  MountTableTooLarge,
  parseMountInfo,
} from "../../../src/linux/mountinfo.ts";
import { tempDir } from "../../helpers/driver.ts";

const sample = readFileSync(join(import.meta.dir, "../../fixtures/mountinfo"), "utf8");

test("parses every well-formed line and skips the rest", () => {
  const mounts = parseMountInfo(sample);
  expect(mounts.map((mount) => mount.mountId)).toEqual([22, 23, 24, 25, 310, 311, 312]);
});

test("reads ids, device, root, mount point, propagation, type and source", () => {
  const bind = parseMountInfo(sample).find((mount) => mount.mountId === 310);
  expect(bind).toEqual({
    mountId: 310,
    parentId: 24,
    device: "0:22",
    root: "/spire/agent-sockets",
    mountPoint:
      "/var/lib/kubelet/pods/6f1d6a3e-93b2-4a1a-9d2c-0d9c5c1a2b3c/volumes/kubernetes.io~csi/spiffe-workload-api/mount",
    propagation: ["shared:5"],
    fsType: "tmpfs",
    source: "tmpfs",
    readOnly: false,
  });
  expect(parseMountInfo(sample).find((mount) => mount.mountId === 25)?.propagation).toEqual([]);
});

test("undoes octal escapes in paths", () => {
  const mounts = parseMountInfo(sample);
  expect(mounts.find((mount) => mount.mountId === 311)?.mountPoint).toEndWith(
    "kubernetes.io~csi/spiffe api/mount",
  );
  const escaped = mounts.find((mount) => mount.mountId === 312);
  expect(escaped?.root).toBe("/data\ttab");
  expect(escaped?.mountPoint).toBe("/mnt/with\\backslash\nnewline");
});

test("reads read-only from the mount's flags or its file system's", () => {
  const [own, superblock, writable] = parseMountInfo(
    [
      "40 22 0:50 / /run/a/fs ro,relatime shared:7 - fuse spiffefs rw",
      "41 22 0:51 / /run/a/sb rw,relatime - tmpfs tmpfs ro,size=4k",
      "42 22 0:52 / /run/a/rw rw,relatime - tmpfs tmpfs rw,rootcontext=x",
    ].join("\n"),
  );
  expect([own?.readOnly, superblock?.readOnly, writable?.readOnly]).toEqual([true, true, false]);
});

describe("MountTableReader", () => {
  const dir = tempDir("unit-mountinfo");
  afterAll(() => rmSync(dir, { recursive: true, force: true }), 30_000);
  const samplePath = join(dir, "sample");
  writeFileSync(samplePath, sample);

  test("keeps only the mounts asked for: by id, and inside a directory (escaped or not)", async () => {
    const reader = new MountTableReader(undefined, samplePath);
    const mounts = await reader.read({
      mountIds: [24],
      directories: ["/var/lib/kubelet/pods/0a0b/volumes/kubernetes.io~csi", "/mnt/with\\backslash"],
    });
    expect(mounts.map((mount) => mount.mountId)).toEqual([24, 311]);
    expect(await reader.read()).toEqual(parseMountInfo(sample));
  });

  test("a table read in chunks, with lines and characters cut at their ends, reads as a whole", async () => {
    // About 1.5 MB: several chunks, and multi-byte characters all along.
    const lines = Array.from(
      { length: 6000 },
      (_, index) =>
        `${100 + index} 22 0:${index} / /var/lib/kubelet/pods/ü${index}/volumes/kubernetes.io~csi/v\\040${"é".repeat(index % 97)}/mount rw shared:${index} - tmpfs tmpfs rw`,
    );
    const path = join(dir, "large");
    writeFileSync(path, `${lines.join("\n")}\n`);
    const reader = new MountTableReader(undefined, path);
    expect(await reader.read()).toEqual(parseMountInfo(readFileSync(path, "utf8")));
    const inside = await reader.read({
      mountIds: [],
      directories: ["/var/lib/kubelet/pods/ü4321"],
    });
    expect(inside.map((mount) => mount.mountId)).toEqual([4421]);
  });

  test("a table larger than allowed fails every call waiting for it", async () => {
    const reader = new MountTableReader(64, samplePath);
    const calls = [reader.read(), reader.read({ mountIds: [22], directories: [] })];
    const outcomes = await Promise.allSettled(calls);
    for (const outcome of outcomes) {
      expect(outcome.status).toBe("rejected");
      expect((outcome as PromiseRejectedResult).reason).toBeInstanceOf(MountTableTooLarge);
    }
  });

  test("calls that ask during a read share the next one, which sees what changed meanwhile", async () => {
    // A FIFO stands in for the table: each read opens it once and gets what one writer writes.
    // A read that no writer comes for would wait for ever, failing the test by its timeout.
    const fifo = join(dir, "fifo");
    Bun.spawnSync(["mkfifo", fifo]);
    const reader = new MountTableReader(undefined, fifo);
    const writers: Promise<number>[] = [];
    const feed = (text: string) =>
      writers.push(Bun.spawn(["sh", "-c", 'printf "%s" "$1" > "$0"', fifo, text]).exited);
    const entry = (id: number, name: string) =>
      `${id} 22 0:${id} / /run/a/${name} rw - tmpfs tmpfs rw\n`;
    const points = async (call: Promise<{ mountPoint: string }[]>) =>
      (await call).map((mount) => mount.mountPoint);

    const first = reader.read();
    feed(entry(40, "first"));
    // Asked while the first read runs: it gets the next one.
    const second = reader.read();
    expect(await points(first)).toEqual(["/run/a/first"]);
    feed(entry(41, "second"));
    // Three calls ask while the second read runs: one third read serves them all.
    const third = Array.from({ length: 3 }, () => reader.read());
    expect(await points(second)).toEqual(["/run/a/second"]);
    feed(entry(42, "third"));
    for (const call of third) expect(await points(call)).toEqual(["/run/a/third"]);
    expect(await Promise.all(writers)).toEqual([0, 0, 0]);
    // No read is left waiting on the FIFO: opening it to write finds no reader.
    expect(() => openSync(fifo, constants.O_WRONLY | constants.O_NONBLOCK)).toThrow(/ENXIO/);
  }, 60_000);
});

describe("MountGate without unique mount ids: the mount of a directory judged from the table", () => {
  const dir = tempDir("gate");
  afterAll(() => rmSync(dir, { recursive: true, force: true }));
  const line = (id: number, type: string, at: string) =>
    `${id} 1 0:${id} / ${at} rw,relatime shared:1 - ${type} src-${id} rw`;
  const where = { at: "/run/x", fix: "unmount it", open: true };
  const found = (mountId: number) => ({ mountId, uniqueId: undefined });

  test("local kernel file systems pass; FUSE, NFS, CIFS, 9p and unknown types are refused, naming the mount", () => {
    const table = join(dir, "types");
    const types = ["ext4", "xfs", "btrfs", "tmpfs", "overlay", "proc"];
    const refused = ["fuse", "fuse.sshfs", "fuseblk", "nfs", "nfs4", "cifs", "9p", "autofs", "x"];
    writeFileSync(
      table,
      [...types, ...refused].map((type, index) => line(100 + index, type, `/m/${type}`)).join("\n"),
    );
    const gate = new MountGate({ table });
    types.forEach((type, index) => {
      expect(gate.judge(found(100 + index), where).fsType).toBe(type);
      expect(isLocalFileSystem(type)).toBe(true);
    });
    refused.forEach((type, index) => {
      const id = 100 + types.length + index;
      const judged = () => gate.judge(found(id), where);
      expect(judged).toThrow(UntrustedMountError);
      expect(judged).toThrow(`/run/x is on a ${type} mount (source "src-${id}", at "/m/${type}")`);
    });
    // A mount that is not in the table is not trusted either.
    expect(() => gate.judge(found(999), where)).toThrow(
      "is on a mount that is not in the mount table",
    );
  });

  test("the table is read again for a mount id it does not hold, not for one it does", () => {
    const table = join(dir, "ids");
    writeFileSync(table, line(10, "ext4", "/"));
    const gate = new MountGate({ table });
    gate.judge(found(10), where);
    gate.judge(found(10), where);
    expect(gate.reads).toBe(1);
    writeFileSync(table, [line(10, "ext4", "/"), line(11, "fuse", "/run/x")].join("\n"));
    expect(() => gate.judge(found(11), where)).toThrow(UntrustedMountError);
    expect(gate.reads).toBe(2);
  });

  test("a table larger than allowed is MountTableTooLarge", () => {
    const table = join(dir, "large");
    const one = `${line(10, "ext4", "/")}\n`;
    writeFileSync(table, one.repeat(Math.ceil((17 * 1024 * 1024) / one.length)));
    expect(() => new MountGate({ table }).judge(found(10), where)).toThrow(MountTableTooLarge);
  });

  test("a watch on the table that is no longer open (POLLNVAL) counts as a change", () => {
    // This process's own table, without mounting anything: its watch closed behind its back.
    const gate = new MountGate({ table: "/proc/self/mountinfo" });
    const fd = openSync(dir, O_PATH | constants.O_DIRECTORY);
    try {
      const mount = gate.mountOf(fd);
      expect(mount.uniqueId).toBeUndefined();
      expect(mount.mountId).toBe(fdinfoMountId(fd));
      // Other gates of this process may watch the table too.
      const before = openTables();
      gate.judge(mount, where);
      gate.judge(mount, where);
      expect(gate.reads).toBe(1);
      const watches = openTables().filter((each) => !before.includes(each));
      expect(watches).toHaveLength(1);
      closeSync(watches[0] as number);
      // Where another user may mount, judged from a fresh read; where only root mounts, not.
      gate.judge(mount, { ...where, open: false });
      expect(gate.reads).toBe(1);
      gate.judge(mount, where);
      expect(gate.reads).toBe(2);
      gate.judge(mount, where);
      expect(gate.reads).toBe(2);
    } finally {
      closeSync(fd);
    }
  });
});

/** The descriptors this process holds open on its mount table. */
function openTables(): number[] {
  const self = `/proc/${process.pid}/mountinfo`;
  return readdirSync("/proc/self/fd")
    .map(Number)
    .filter((fd) => {
      try {
        return readlinkSync(`/proc/self/fd/${fd}`) === self;
      } catch {
        return false;
      }
    });
}

function fdinfoMountId(fd: number): number {
  return Number(/^mnt_id:\s*(\d+)$/m.exec(readFileSync(`/proc/self/fdinfo/${fd}`, "latin1"))?.[1]);
}
