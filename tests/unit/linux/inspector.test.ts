// The inspector (src/linux/inspector.ts): operations in a child process, bounded in time. A
// file system that stops answering is in tests/e2e/linux/inspector.
import { describe, expect, test } from "bun:test";
import { InspectionError, InspectionTimeout } from "../../../src/linux/inspector.ts";
import { alive, inspectors } from "../../helpers/inspector.ts";
import { waitFor } from "../../helpers/wait.ts";

const inspector = inspectors();

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
