import { expect, test } from "bun:test";
import { KeyedMutex } from "../../src/csi/locks.ts";

test("runs calls for one key one at a time, in arrival order", async () => {
  const mutex = new KeyedMutex();
  const events: string[] = [];
  let running = 0;
  let most = 0;
  await Promise.all(
    Array.from({ length: 20 }, (_, i) =>
      mutex.run("target", async () => {
        running++;
        most = Math.max(most, running);
        events.push(`start ${i}`);
        await Bun.sleep(1);
        events.push(`end ${i}`);
        running--;
      }),
    ),
  );
  expect(most).toBe(1);
  expect(events.slice(0, 4)).toEqual(["start 0", "end 0", "start 1", "end 1"]);
  expect(mutex.size).toBe(0);
});

test("runs calls for different keys in parallel", async () => {
  const mutex = new KeyedMutex();
  let running = 0;
  let most = 0;
  await Promise.all(
    Array.from({ length: 10 }, (_, i) =>
      mutex.run(`target-${i}`, async () => {
        running++;
        most = Math.max(most, running);
        await Bun.sleep(5);
        running--;
      }),
    ),
  );
  expect(most).toBe(10);
});

test("a failing call releases the key for the next one", async () => {
  const mutex = new KeyedMutex();
  const failed = mutex.run("target", async () => {
    throw new Error("boom");
  });
  const next = mutex.run("target", async () => "ran");
  await expect(failed).rejects.toThrow("boom");
  expect(await next).toBe("ran");
  expect(mutex.size).toBe(0);
});

test("InFlightCalls: idle resolves once every started call has finished", async () => {
  const { InFlightCalls } = await import("../../src/rpc/in-flight.ts");
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
