// The inspector (src/linux/inspector.ts) over a real FUSE mount whose server stops answering.
import { afterAll, describe, expect, test } from "bun:test";
import { mkdirSync, rmSync } from "node:fs";
import { join } from "node:path";
import { InspectionTimeout, InspectionUnavailable } from "../../../src/linux/inspector.ts";
import { assertPrivateMountNamespace, tempDir } from "../../helpers/driver.ts";
import { FuseMount } from "../../helpers/fuse.ts";
import { alive, inspectors } from "../../helpers/inspector.ts";
import { waitFor } from "../../helpers/wait.ts";

const inspector = inspectors();

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
