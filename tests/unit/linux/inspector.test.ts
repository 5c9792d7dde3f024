// The inspector (src/linux/inspector.ts): operations in a child process, bounded in time.
import { afterAll, describe, expect, test } from "bun:test";
import { mkdirSync, rmSync } from "node:fs";
import { join, resolve } from "node:path";
import {
  InspectionError,
  InspectionTimeout,
  InspectionUnavailable,
  Inspector,
} from "../../../src/linux/inspector.ts";
import { assertPrivateMountNamespace, tempDir } from "../../helpers/driver.ts";
import { FuseMount } from "../../helpers/fuse.ts";
import type { testOperations } from "../../helpers/inspector-child.ts";
import { waitFor } from "../../helpers/wait.ts";

const CHILD = [process.execPath, resolve(import.meta.dir, "../../helpers/inspector-child.ts")];
const opened: Inspector<typeof testOperations>[] = [];

function inspector(timeoutMs: number, maxStuck?: number) {
  const made = new Inspector<typeof testOperations>({ timeoutMs, command: CHILD, maxStuck });
  opened.push(made);
  return made;
}

afterAll(() => {
  for (const each of opened) each.close();
});

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

describe("Inspector", () => {
  test("answers in order, one child for all", async () => {
    const child = inspector(5_000);
    const answers = await Promise.all([1, 2, 3].map((value) => child.run("echo", { value })));
    expect(answers).toEqual([1, 2, 3]);
    const pids = await Promise.all([child.run("pid", {}), child.run("pid", {})]);
    expect(pids[0]).toBe(pids[1] as number);
  }, 30_000);

  test("a thrown error is an InspectionError with its code, and the child stays", async () => {
    const child = inspector(5_000);
    const pid = await child.run("pid", {});
    const error = await child.run("fail", {}, "failing on purpose").catch((e: unknown) => e);
    expect(error).toBeInstanceOf(InspectionError);
    expect((error as InspectionError).message).toBe("failing on purpose: it failed");
    expect((error as InspectionError).code).toBe("EXDEV");
    expect(await child.run("pid", {})).toBe(pid);
  }, 30_000);

  test("a child held past the timeout is killed, its calls fail, the next call gets a new one", async () => {
    const child = inspector(1_000);
    const pid = await child.run("pid", {});
    const started = performance.now();
    const [held, queued] = await Promise.all([
      child.run("hold", { ms: 60_000 }, "holding").catch((e: unknown) => e),
      child.run("echo", { value: 1 }, "queued").catch((e: unknown) => e),
    ]);
    // Bounded by the timeout, not by the hold: a condition, generous for a loaded machine.
    expect(performance.now() - started).toBeLessThan(20_000);
    expect(held).toBeInstanceOf(InspectionTimeout);
    expect((held as Error).message).toStartWith("holding: no answer within 1 s");
    expect(queued).toBeInstanceOf(InspectionTimeout);
    await waitFor("the held child to be gone", () => !alive(pid));
    expect(await child.run("pid", {})).not.toBe(pid);
  }, 30_000);

  test("work that says it progresses may take longer than the timeout; so may an await", async () => {
    // Four times the timeout, with a timeout that leaves a loaded machine room for the signs.
    const child = inspector(2_000);
    expect(await child.run("work", { ms: 8_000 })).toBeGreaterThan(0);
    expect(await child.run("wait", { ms: 8_000 })).toBe("waited");
  }, 30_000);

  test("a crashed child fails its call with its stderr; the next call gets a new one", async () => {
    const child = inspector(5_000);
    const error = await child.run("crash", {}, "crashing").catch((e: unknown) => e);
    expect(error).toBeInstanceOf(InspectionError);
    expect((error as Error).message).toContain("crashing: the inspecting process exited (3)");
    expect(await child.run("echo", { value: "again" })).toBe("again");
  }, 30_000);
});

describe("Inspector and a file system that stops answering", () => {
  assertPrivateMountNamespace();
  const root = tempDir("inspector");
  const mountPoint = join(root, "fuse");
  mkdirSync(mountPoint);
  let fuse: FuseMount | undefined;
  afterAll(async () => {
    await fuse?.stop();
    rmSync(root, { recursive: true, force: true });
  }, 60_000);

  test("names where it is stuck, keeps at most maxStuck stuck children, recovers when it answers", async () => {
    fuse = await FuseMount.start(mountPoint);
    const child = inspector(1_000, 2);
    expect(await child.run("stat", { path: mountPoint })).toBe(1);
    await fuse.hang();
    const pids: number[] = [];
    for (let round = 0; round < 2; round++) {
      pids.push(await child.run("pid", {}));
      const error = await child
        .run("fstat", { path: mountPoint }, "a stat")
        .catch((e: unknown) => e);
      expect(error).toBeInstanceOf(InspectionTimeout);
      expect((error as InspectionTimeout).stuckAt).toEqual([mountPoint]);
      expect((error as Error).message).toContain(`stuck at "${mountPoint}"`);
    }
    // Killed, and still there: a request the server read and never answered cannot be killed.
    expect(pids.every(alive)).toBe(true);
    const refused = await child.run("echo", { value: 1 }, "an echo").catch((e: unknown) => e);
    expect(refused).toBeInstanceOf(InspectionUnavailable);
    expect((refused as Error).message).toContain(
      "an echo: not tried, earlier checks are still stuck",
    );

    await fuse.answer();
    await waitFor("the stuck children to end", () => !pids.some(alive));
    expect(await child.run("stat", { path: mountPoint })).toBe(1);
  }, 60_000);
});
