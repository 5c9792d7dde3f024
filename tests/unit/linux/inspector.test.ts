// The inspector (src/linux/inspector.ts): operations in child processes, bounded in time.
import { afterAll, describe, expect, test } from "bun:test";
import { mkdirSync, readFileSync, rmSync } from "node:fs";
import { join, resolve } from "node:path";
import {
  InspectionError,
  InspectionTimeout,
  InspectionUnavailable,
  Inspector,
  type InspectorOptions,
  type LeftBehind,
} from "../../../src/linux/inspector.ts";
import { assertPrivateMountNamespace, tempDir } from "../../helpers/driver.ts";
import { FuseMount } from "../../helpers/fuse.ts";
import type { testOperations } from "../../helpers/inspector-child.ts";
import { waitFor } from "../../helpers/wait.ts";

const CHILD = [process.execPath, resolve(import.meta.dir, "../../helpers/inspector-child.ts")];
const opened: Inspector<typeof testOperations>[] = [];

function inspector(timeoutMs: number, options: Partial<InspectorOptions> = {}) {
  const made = new Inspector<typeof testOperations>({ timeoutMs, command: CHILD, ...options });
  opened.push(made);
  return made;
}

afterAll(async () => {
  await Promise.all(opened.map((each) => each.close()));
}, 30_000);

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

const scratch = tempDir("inspector-unit");
afterAll(() => rmSync(scratch, { recursive: true, force: true }));

describe("Inspector", () => {
  test("one child for calls one after another; it exits once idle, and the next call starts another", async () => {
    const child = inspector(5_000, { idleMs: 200 });
    expect(await child.run("echo", { value: 1 })).toBe(1);
    const pid = await child.run("pid", {});
    expect(await child.run("pid", {})).toBe(pid);
    await waitFor("the idle child to exit", () => !alive(pid));
    const next = await child.run("pid", {});
    expect(next).not.toBe(pid);
  }, 30_000);

  test("a call does not wait behind a long one: another child answers it", async () => {
    const child = inspector(30_000);
    const holding = child.run("hold", { ms: 60_000 }, "holding").catch((e: unknown) => e);
    expect(await child.run("echo", { value: "meanwhile" })).toBe("meanwhile");
    await child.close();
    expect(await holding).toBeInstanceOf(InspectionError);
  }, 30_000);

  test("identical calls that wait are run once, for all of them", async () => {
    const child = inspector(30_000);
    const log = join(scratch, "note.log");
    // Both children busy: what follows waits in the parent.
    const holds = [child.run("hold", { ms: 1_000 }), child.run("hold", { ms: 1_001 })];
    const notes = [1, 2, 3].map(() => child.run("note", { log }));
    const other = child.run("echo", { value: "other" });
    const pids = await Promise.all(notes);
    expect(new Set(pids).size).toBe(1);
    expect(readFileSync(log, "utf8")).toBe("ran\n");
    expect(await other).toBe("other");
    expect(await Promise.all(holds)).toEqual(["held", "held"]);
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

  test("an answer larger than an inspection may send is an error, not a burden on the parent", async () => {
    const child = inspector(5_000);
    const error = await child.run("flood", {}, "flooding").catch((e: unknown) => e);
    expect(error).toBeInstanceOf(InspectionError);
    expect((error as InspectionError).code).toBe("E2BIG");
    expect((error as Error).message).toStartWith("flooding: an answer of ");
  }, 30_000);

  test("a child held past the timeout is killed and its call fails; others are answered; the next call gets a new one", async () => {
    const child = inspector(1_000);
    const pid = await child.run("pid", {});
    const started = performance.now();
    const [held, other] = await Promise.all([
      child.run("hold", { ms: 60_000 }, "holding").catch((e: unknown) => e),
      child.run("echo", { value: 1 }, "another"),
    ]);
    // Bounded by the timeout, not by the hold: a condition, generous for a loaded machine.
    expect(performance.now() - started).toBeLessThan(20_000);
    expect(held).toBeInstanceOf(InspectionTimeout);
    expect((held as Error).message).toStartWith("holding: no answer within 1 s");
    expect(other).toBe(1);
    await waitFor("the held child to be gone", () => !alive(pid));
    expect(await child.run("pid", {})).not.toBe(pid);
  }, 30_000);

  test("work that yields between its steps may take longer than the timeout; so may an await", async () => {
    // Four times the timeout, with a timeout that leaves a loaded machine room for the signs.
    const child = inspector(2_000);
    expect(await child.run("work", { ms: 8_000 })).toBeGreaterThan(0);
    expect(await child.run("wait", { ms: 8_000 })).toBe("waited");
  }, 30_000);

  test("a step that holds the process amid such work is taken for stuck", async () => {
    const child = inspector(1_000);
    const error = await child.run("stall", { ms: 60_000 }, "stalling").catch((e: unknown) => e);
    expect(error).toBeInstanceOf(InspectionTimeout);
    expect((error as Error).message).toStartWith("stalling: no answer within 1 s");
  }, 30_000);

  test("a crashed child fails its call with its stderr; the next call gets a new one", async () => {
    const child = inspector(5_000);
    const error = await child.run("crash", {}, "crashing").catch((e: unknown) => e);
    expect(error).toBeInstanceOf(InspectionError);
    expect((error as Error).message).toContain("crashing: the inspecting process exited (3)");
    expect(await child.run("echo", { value: "again" })).toBe("again");
  }, 30_000);
});

describe("Inspector and file systems that stop answering", () => {
  assertPrivateMountNamespace();
  const root = tempDir("inspector");
  const mountPoints = [join(root, "fuse"), join(root, "other")];
  for (const each of mountPoints) mkdirSync(each);
  const [mountPoint = "", otherPoint = ""] = mountPoints;
  const fuses: FuseMount[] = [];
  afterAll(async () => {
    for (const fuse of fuses) await fuse.stop();
    rmSync(root, { recursive: true, force: true });
  }, 60_000);

  /** Two calls of `op` at `path` that time out; the pids of the children left stuck. */
  async function stuckTwice(child: Inspector<typeof testOperations>, path: string) {
    const pids: number[] = [];
    for (let round = 0; round < 2; round++) {
      pids.push(await child.run("pid", {}));
      const error = await child.run("fstat", { path }, "a stat").catch((e: unknown) => e);
      expect(error).toBeInstanceOf(InspectionTimeout);
      expect((error as InspectionTimeout).stuckAt).toEqual([path]);
      expect((error as Error).message).toContain(`stuck at "${path}"`);
    }
    return pids;
  }

  test("a stuck call holds only what it was about: calls there are refused at once, calls elsewhere answered; it recovers when the file system answers", async () => {
    const fuse = await FuseMount.start(mountPoint);
    fuses.push(fuse);
    const child = inspector(1_000, { maxStuck: 2 });
    expect(await child.run("stat", { path: mountPoint })).toBe(1);
    await fuse.hang();
    const pids = await stuckTwice(child, mountPoint);
    // Killed, and still there: a request the server read and never answered cannot be killed.
    expect(pids.every(alive)).toBe(true);
    for (const path of [mountPoint, join(mountPoint, "inside")]) {
      const refused = await child.run("stat", { path }, "a stat").catch((e: unknown) => e);
      expect(refused).toBeInstanceOf(InspectionUnavailable);
      expect((refused as Error).message).toContain(
        `a stat: not tried, earlier checks are still stuck at "${mountPoint}"`,
      );
    }
    // About something else: a fresh child answers.
    expect(await child.run("echo", { value: 1 }, "an echo")).toBe(1);
    expect(await child.run("stat", { path: otherPoint })).toBeGreaterThan(0);

    await fuse.answer();
    await waitFor("the stuck children to end", () => !pids.some(alive));
    expect(await child.run("stat", { path: mountPoint })).toBe(1);
  }, 60_000);

  test("stuck children in all are bounded; close() names those that stay", async () => {
    const fuse = fuses[0] ?? (await FuseMount.start(mountPoint));
    const other = await FuseMount.start(otherPoint);
    fuses.push(other);
    const left: LeftBehind[] = [];
    const child = inspector(1_000, {
      maxStuck: 1,
      maxStuckInAll: 2,
      onLeftBehind: (children) => left.push(...children),
    });
    await fuse.hang();
    await other.hang();
    const stuck: number[] = [];
    for (const path of [mountPoint, otherPoint]) {
      stuck.push(await child.run("pid", {}));
      expect(await child.run("fstat", { path }).catch((e: unknown) => e)).toBeInstanceOf(
        InspectionTimeout,
      );
    }
    const refused = await child.run("echo", { value: 1 }, "an echo").catch((e: unknown) => e);
    expect(refused).toBeInstanceOf(InspectionUnavailable);
    expect((refused as Error).message).toContain(`"${mountPoint}"`);
    expect((refused as Error).message).toContain(`"${otherPoint}"`);

    await child.close();
    expect(left.map((each) => each.pid).sort()).toEqual([...stuck].sort());
    expect(left.flatMap((each) => each.stuckAt).sort()).toEqual([mountPoint, otherPoint].sort());
    // Uninterruptible, waiting for the file system's answer.
    for (const each of left) expect(each.state).toStartWith("D");
    await fuse.answer();
    await other.answer();
    await waitFor("the stuck children to end", () => !stuck.some(alive));
  }, 60_000);
});
