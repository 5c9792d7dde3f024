// The inspector (src/linux/inspector.ts) over real FUSE mounts whose servers stop answering.
import { afterAll, describe, expect, test } from "bun:test";
import { mkdirSync, rmSync } from "node:fs";
import { join } from "node:path";
import {
  InspectionTimeout,
  InspectionUnavailable,
  type Inspector,
  type LeftBehind,
} from "../../../src/linux/inspector.ts";
import { assertPrivateMountNamespace, tempDir } from "../../helpers/driver.ts";
import { FuseMount } from "../../helpers/fuse.ts";
import { alive, inspectors } from "../../helpers/inspector.ts";
import type { testOperations } from "../../helpers/inspector-child.ts";
import { waitFor } from "../../helpers/wait.ts";

const inspector = inspectors();

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
