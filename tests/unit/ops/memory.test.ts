import { afterEach, expect, spyOn, test } from "bun:test";
import { idleCollector } from "../../../src/ops/memory.ts";
import { waitFor } from "../../helpers/wait.ts";

const gc = spyOn(Bun, "gc");
const shrink = spyOn(Bun, "shrink");
afterEach(() => {
  gc.mockClear();
  shrink.mockClear();
});

test("idle, the heap is collected; at rest, its memory is given back; a call in between defers it", async () => {
  // Rest long after the collection, so that a loaded machine cannot reach it between two checks.
  const callMade = idleCollector(20, 5_000);
  callMade();
  await waitFor("the idle collection", () => gc.mock.calls.length === 1);
  expect(shrink).not.toHaveBeenCalled();
  // A call after the collection: rest starts again from it.
  callMade();
  await waitFor("the second idle collection", () => gc.mock.calls.length === 2);
  expect(shrink).not.toHaveBeenCalled();
  await waitFor("the memory given back at rest", () => shrink.mock.calls.length === 1);
  expect(gc).toHaveBeenCalledTimes(2);
}, 60_000);
