// The mount gate over real mounts: a FUSE server that forges its root's inode number, a mount
// id given again to a FUSE mount, a verdict that outlives changes of the mount table, and the
// fallback without unique mount ids. Whatever may hang is asked by a probe process
// (../../helpers/fuse-probe.ts), which the test waits for with a deadline: a call that reached
// a silent server fails the test instead of holding it.
import { afterAll, afterEach, describe, expect, test } from "bun:test";
import { mkdirSync, rmSync, statSync } from "node:fs";
import { join } from "node:path";
import { mountTestFile, tempDir } from "../../helpers/driver.ts";
import { FuseMount } from "../../helpers/fuse.ts";
import { Probe } from "../../helpers/fuse-probe.ts";
import { mountsUnder } from "../../helpers/kubelet.ts";

mountTestFile();

// A hung call is one still unanswered after this: generous for a loaded machine, short of the
// test's own timeout.
const HUNG_MS = 30_000;

const root = tempDir("gate");
run("mount", "-t", "tmpfs", "gate-test", root);
const fuses: FuseMount[] = [];
const probes: Probe[] = [];

afterEach(async () => {
  for (const probe of probes.splice(0)) await probe.stop();
  for (const fuse of fuses.splice(0)) await fuse.stop();
}, 60_000);

afterAll(() => {
  Bun.spawnSync(["umount", "-R", root]);
  expect(mountsUnder(root)).toBe(0);
  rmSync(root, { recursive: true, force: true });
}, 60_000);

function run(...argv: string[]): void {
  const result = Bun.spawnSync(argv, { stderr: "pipe" });
  if (result.exitCode !== 0) throw new Error(`${argv.join(" ")}: ${result.stderr}`);
}

function directory(...names: string[]): string {
  const path = join(root, ...names);
  mkdirSync(path, { recursive: true, mode: 0o755 });
  return path;
}

async function silentFuse(mountPoint: string, rootIno?: number): Promise<FuseMount> {
  const fuse = await FuseMount.start(mountPoint, rootIno === undefined ? {} : { rootIno });
  fuses.push(fuse);
  // The kernel takes the server's word: its root has the inode number given.
  if (rootIno !== undefined) expect(statSync(mountPoint).ino).toBe(rootIno);
  await fuse.hang();
  return fuse;
}

function probe(): { ask: (command: string) => ReturnType<Probe["ask"]> } {
  const started = new Probe();
  probes.push(started);
  const endServers = async () => {
    for (const fuse of fuses) await fuse.stop();
  };
  return { ask: (command) => started.ask(command, endServers, HUNG_MS) };
}

describe("a FUSE server that forges its root's inode number", () => {
  test("over a pod's target, with the inode number of the agent's directory: refused, nothing asked of it", async () => {
    const agent = directory("forged", "agent");
    const pod = directory("forged", "pod");
    const target = directory("forged", "pod", "mount");
    const asker = probe();
    expect(await asker.ask(`walk ${agent}`)).toEqual({ ok: "directory" });
    const fuse = await silentFuse(target, statSync(agent).ino);
    const before = await fuse.answer().then(() => fuse.counts());
    await fuse.hang();
    expect(await asker.ask(`entry ${pod} mount`)).toEqual({
      refused: `${target} is on a fuse mount (source "stuck-fuse", at "${target}"), a file system served by a process or over the network that can stop answering; the driver does not look into it`,
    });
    expect(await fuse.answer().then(() => fuse.counts())).toEqual(before);
  });

  test("over the agent's directory, at the mount id of the bind judged there before: refused", async () => {
    const store = directory("reuse", "store", "agent");
    const agent = directory("reuse", "agent");
    run("mount", "--bind", store, agent);
    const forged = statSync(agent).ino;
    const asker = probe();
    expect(await asker.ask(`walk ${agent}`)).toEqual({ ok: "directory" });
    expect(await asker.ask(`table ${agent} open`)).toEqual({ ok: "tmpfs" });
    const table = (await asker.ask("counts")) as { ok: { fallbackReads: number } };
    run("umount", agent);
    // The freed id goes to the next mount: this FUSE one, whose root claims the bind's number.
    await silentFuse(agent, forged);
    const refusal = `${agent} is on a fuse mount (source "stuck-fuse", at "${agent}")`;
    const walked = await asker.ask(`walk ${agent}`);
    expect("refused" in walked && walked.refused).toStartWith(refusal);
    // Without unique ids too: the table changed, so it is read again.
    const judged = await asker.ask(`table ${agent} open`);
    expect("refused" in judged && judged.refused).toStartWith(refusal);
    expect(await asker.ask("counts")).toMatchObject({
      ok: { fallbackReads: table.ok.fallbackReads + 1 },
    });
  });
});

describe("what the gate asks", () => {
  test("a silent FUSE mount is told and refused at once: statx with AT_STATX_DONT_SYNC sends no request", async () => {
    const place = directory("silent", "fuse");
    const fuse = await silentFuse(place);
    const before = await fuse.answer().then(() => fuse.counts());
    await fuse.hang();
    const asker = probe();
    const walked = await asker.ask(`walk ${place}`);
    expect("refused" in walked && walked.refused).toStartWith(`${place} is on a fuse mount`);
    expect(await asker.ask("counts")).toMatchObject({ ok: { reads: 0 } });
    expect(await fuse.answer().then(() => fuse.counts())).toEqual(before);
  });

  test("a verdict by unique id outlives changes of the mount table: no statmount, no table read", async () => {
    const place = directory("lasting", "agent");
    run("mount", "-t", "tmpfs", "lasting-test", place);
    const asker = probe();
    expect(await asker.ask(`judge ${place}`)).toEqual({
      ok: { fsType: "tmpfs", source: "lasting-test", mountPoint: place },
    });
    expect(await asker.ask(`walk ${place}`)).toEqual({ ok: "directory" });
    const first = await asker.ask("counts");
    for (const name of ["one", "two"]) {
      const elsewhere = directory("lasting", name);
      run("mount", "-t", "tmpfs", `lasting-${name}`, elsewhere);
      expect(await asker.ask(`walk ${place}`)).toEqual({ ok: "directory" });
    }
    expect(await asker.ask("counts")).toEqual(first);
    expect(first).toMatchObject({ ok: { reads: 0 } });
  });

  test("without unique ids, a change of the table is seen: where others mount, the table is read again", async () => {
    const place = directory("fallback", "agent");
    run("mount", "-t", "tmpfs", "fallback-test", place);
    const asker = probe();
    const reads = async () =>
      ((await asker.ask("counts")) as { ok: { fallbackReads: number } }).ok.fallbackReads;
    expect(await asker.ask(`table ${place} open`)).toEqual({ ok: "tmpfs" });
    expect(await asker.ask(`table ${place} open`)).toEqual({ ok: "tmpfs" });
    expect(await reads()).toBe(1);
    run("mount", "-t", "tmpfs", "fallback-other", directory("fallback", "other"));
    expect(await asker.ask(`table ${place} closed`)).toEqual({ ok: "tmpfs" });
    expect(await reads()).toBe(1);
    expect(await asker.ask(`table ${place} open`)).toEqual({ ok: "tmpfs" });
    expect(await reads()).toBe(2);
  });
});
