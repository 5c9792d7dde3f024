// An inspector child with operations made for testing the mechanism (../../src/linux/inspector.ts):
// what a stuck system call looks like from the parent (the event loop held), slow work that
// yields between its steps, failures and a crash.
import { appendFileSync, fstatSync, openSync, statSync } from "node:fs";
import { serveInspections } from "../../src/linux/inspector-child.ts";

const O_PATH = 0o10000000;

const held = new Int32Array(new SharedArrayBuffer(4));

export const testOperations = {
  echo: (args: { value: unknown }) => args.value,
  /** Holds the process for `ms`, as a system call that does not return would. */
  hold: (args: { ms: number }) => {
    Atomics.wait(held, 0, 0, args.ms);
    return "held";
  },
  /** Works for `ms` in steps of 5 ms that each hold the process, yielding between them. */
  *work(args: { ms: number }): Generator<void, number, undefined> {
    const end = performance.now() + args.ms;
    let rounds = 0;
    while (performance.now() < end) {
      Atomics.wait(held, 0, 0, 5);
      yield;
      rounds++;
    }
    return rounds;
  },
  /** Yields a few times, then holds the process for `ms`: a call that hangs amid a long loop. */
  *stall(args: { ms: number }): Generator<void, string, undefined> {
    for (let step = 0; step < 3; step++) yield;
    Atomics.wait(held, 0, 0, args.ms);
    return "held";
  },
  /** Adds a line to the file `log`: how many times it ran. */
  note: (args: { log: string }) => {
    appendFileSync(args.log, "ran\n");
    return process.pid;
  },
  /** Answers more than an inspection may send. */
  flood: (_: object) => "x".repeat(1024 * 1024),
  /** Awaits for `ms` without holding the event loop. */
  wait: async (args: { ms: number }) => {
    await Bun.sleep(args.ms);
    return "waited";
  },
  fail: (_: object) => {
    throw Object.assign(new Error("it failed"), { code: "EXDEV" });
  },
  crash: (_: object) => {
    process.stderr.write("going down\n");
    process.exit(3);
  },
  stat: (args: { path: string }) => statSync(args.path).ino,
  /** Opens the file without reading it (O_PATH), then stats what it opened. */
  fstat: (args: { path: string }) => fstatSync(openSync(args.path, O_PATH)).ino,
  pid: (_: object) => process.pid,
};

if (import.meta.main) await serveInspections(testOperations);
