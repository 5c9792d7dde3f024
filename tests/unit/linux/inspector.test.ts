// The inspector (src/linux/inspector.ts): operations in child processes, bounded in time.
import { afterAll, describe, expect, test } from "bun:test";
import { readFileSync, rmSync } from "node:fs";
import { join } from "node:path";
import { InspectionError, InspectionTimeout } from "../../../src/linux/inspector.ts";
import { tempDir } from "../../helpers/driver.ts";
import { alive, inspectors } from "../../helpers/inspector.ts";
import { waitFor } from "../../helpers/wait.ts";

const inspector = inspectors();

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
