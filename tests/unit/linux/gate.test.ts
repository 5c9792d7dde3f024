// The mount gate over this machine's kernel, as an ordinary user and without mounting anything:
// mounts told by their unique ids (statx, statmount) where the kernel gives them. What needs a
// mount of its own (FUSE, a forged inode number, ids given again) is in tests/e2e/linux/gate.
import { afterAll, expect, test } from "bun:test";
import { closeSync, constants, openSync, readFileSync, rmSync } from "node:fs";
import { release } from "node:os";
import { O_PATH } from "../../../src/linux/descriptors.ts";
import { MountGate } from "../../../src/linux/gate.ts";
import { parseMountInfo } from "../../../src/linux/mountinfo.ts";
import { tempDir } from "../../helpers/driver.ts";

const dir = tempDir("unit-gate");
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const where = { at: "/run/x", fix: "unmount it", open: true };
// Linux 6.8 gave mounts unique ids (statx STATX_MNT_ID_UNIQUE, statmount).
const [major = 0, minor = 0] = release().split(".").map(Number);
const uniqueIds = major > 6 || (major === 6 && minor >= 8);

function opened<T>(path: string, use: (fd: number) => T): T {
  const fd = openSync(path, O_PATH | constants.O_DIRECTORY);
  try {
    return use(fd);
  } finally {
    closeSync(fd);
  }
}

function tableEntry(fd: number) {
  const text = readFileSync(`/proc/self/fdinfo/${fd}`, "latin1");
  const id = Number(/^mnt_id:\s*(\d+)$/m.exec(text)?.[1]);
  return parseMountInfo(readFileSync("/proc/self/mountinfo", "utf8")).find(
    (mount) => mount.mountId === id,
  );
}

test("a mount is told by its unique id, and judged as the mount table describes it", () => {
  const gate = new MountGate();
  for (const path of [dir, "/proc"]) {
    opened(path, (fd) => {
      const entry = tableEntry(fd);
      const found = gate.mountOf(fd);
      expect(found.uniqueId === undefined).toBe(!uniqueIds);
      expect(found.mountId).toBe(entry?.mountId as number);
      const judged = gate.judge(found, where);
      expect(judged.fsType).toBe(entry?.fsType as string);
      expect(judged.mountPoint).toBe(entry?.mountPoint as string);
    });
  }
  expect(gate.reads).toBe(uniqueIds ? 0 : 1);
});

test("a mount seen before is judged from what the kernel said of it then: one statx, no statmount", () => {
  const gate = new MountGate();
  opened(dir, (fd) => gate.judge(gate.mountOf(fd), where));
  const statmounts = gate.statmounts;
  expect(statmounts).toBe(uniqueIds ? 1 : 0);
  for (let round = 0; round < 3; round++) {
    opened(dir, (fd) => gate.judge(gate.mountOf(fd), where));
  }
  expect(gate.statmounts).toBe(statmounts);
  expect(gate.reads).toBe(uniqueIds ? 0 : 1);
});

test("without the kernel's unique ids (kernel: false), the same mount is judged from the table", () => {
  const gate = new MountGate({ kernel: false });
  opened(dir, (fd) => {
    const found = gate.mountOf(fd);
    expect(found.uniqueId).toBeUndefined();
    expect(gate.judge(found, where).fsType).toBe(tableEntry(fd)?.fsType as string);
  });
  expect(gate.statmounts).toBe(0);
  expect(gate.reads).toBe(1);
});
