import { expect, test } from "bun:test";
import { InFlightCalls } from "../../../src/rpc/in-flight.ts";

test("idle resolves once every started call has finished", async () => {
  const calls = new InFlightCalls();
  await calls.idle();
  calls.start();
  calls.start();
  let idle = false;
  const waiting = calls.idle().then(() => {
    idle = true;
  });
  calls.finish();
  await Bun.sleep(1);
  expect(idle).toBe(false);
  calls.finish();
  await waiting;
  expect(idle).toBe(true);
});
