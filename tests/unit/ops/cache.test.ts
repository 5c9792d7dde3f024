import { expect, test } from "bun:test";
import { cached } from "../../../src/ops/cache.ts";
import { waitFor } from "../../helpers/wait.ts";

test("cached: concurrent callers share one computation, and callers within the interval its result", async () => {
  let runs = 0;
  const value = cached(async () => {
    runs++;
    await Bun.sleep(20);
    return runs;
  }, 60_000);
  expect(await Promise.all([value(), value(), value()])).toEqual([1, 1, 1]);
  expect(await value()).toBe(1);
});

test("cached: it runs again once the interval has passed", async () => {
  let runs = 0;
  const value = cached(async () => ++runs, 1);
  expect(await value()).toBe(1);
  const computed = performance.now();
  await waitFor("the interval to pass", () => performance.now() > computed + 2);
  expect(await value()).toBe(2);
});

test("cached: a failure is shared by its waiters but not kept", async () => {
  let runs = 0;
  const value = cached(async () => {
    runs++;
    if (runs === 1) throw new Error("first run fails");
    return runs;
  }, 60_000);
  const waiters = await Promise.allSettled([value(), value()]);
  expect(waiters.map((waiter) => waiter.status)).toEqual(["rejected", "rejected"]);
  expect(await value()).toBe(2);
});
