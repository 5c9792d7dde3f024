// An attacker with root in the pod directories: swaps pairs of paths (a directory and a
// symbolic link beside it) with renameat2(RENAME_EXCHANGE), as fast as it can, until its
// standard input closes or the time bound passes. Prints how many swaps it made. Always leaves
// every pair of names as it found them.
//   bun tests/helpers/exchanger.ts MAX_MS A1 B1 [A2 B2 ...]
import { dlopen, FFIType, ptr } from "bun:ffi";
import { lstatSync } from "node:fs";

const [maxMs, ...paths] = process.argv.slice(2);
if (!maxMs || paths.length < 2 || paths.length % 2 !== 0) {
  throw new Error("usage: exchanger.ts MAX_MS A1 B1 [A2 B2 ...]");
}

const AT_FDCWD = -100;
const RENAME_EXCHANGE = 2;
const libc = dlopen("libc.so.6", {
  renameat2: {
    args: [FFIType.i32, FFIType.ptr, FFIType.i32, FFIType.ptr, FFIType.u32],
    returns: FFIType.i32,
  },
});
const pairs = Array.from({ length: paths.length / 2 }, (_, index) => ({
  a: Buffer.from(`${paths[2 * index]}\0`),
  b: Buffer.from(`${paths[2 * index + 1]}\0`),
  swaps: 0,
}));
// A swap fails while the driver has the directory mounted (EBUSY) or removed (ENOENT): the
// attacker just goes on.
const exchange = (pair: (typeof pairs)[number]) => {
  if (libc.symbols.renameat2(AT_FDCWD, ptr(pair.a), AT_FDCWD, ptr(pair.b), RENAME_EXCHANGE) === 0) {
    pair.swaps++;
  }
};

let stop = false;
process.stdin.on("close", () => {
  stop = true;
});
process.stdin.on("end", () => {
  stop = true;
});
process.stdin.resume();

const deadline = Date.now() + Number(maxMs);
while (!stop && Date.now() < deadline) {
  // A burst of swaps, then a turn of the event loop to notice that stdin closed.
  for (let i = 0; i < 100; i++) {
    for (const pair of pairs) exchange(pair);
  }
  await new Promise((resolve) => setImmediate(resolve));
}
// Each pair as it was: the directory back at the first name, the link at the second.
for (const pair of pairs) {
  const first = lstatSync(pair.a.subarray(0, -1).toString(), { throwIfNoEntry: false });
  if (first?.isSymbolicLink()) exchange(pair);
}
console.log(String(pairs.reduce((sum, pair) => sum + pair.swaps, 0)));
