// What a failed `mount` or `umount` said is part of the error: the mounter gives each command a
// stderr of its own (a file of no name, or a pipe where no file can be made) and reads it only
// when the command failed.
import { afterAll, describe, expect, test } from "bun:test";
import { readdirSync, readlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { openDirectory } from "../../../src/linux/descriptors.ts";
import { CommandMounter, MountCommandError } from "../../../src/linux/mounter.ts";
import { mountTestFile } from "../../helpers/driver.ts";
import { testbed } from "../../helpers/testbed.ts";

mountTestFile();

const bed = testbed("mount-messages", { agent: false });
const bin = bed.dir("bin");
// A `mount` that says on stderr what the file beside it holds, and fails unless that starts with
// "ok:".
const mountScript = join(bin, "mount");
writeFileSync(
  mountScript,
  [
    "#!/bin/sh",
    'said=$(cat "$0.say")',
    'case "$said" in',
    `  ok:*) rest="\${said#ok:}"; [ -z "$rest" ] || echo "$rest" >&2; exit 0 ;;`,
    '  *) echo "$said" >&2; exit 32 ;;',
    "esac",
    "",
  ].join("\n"),
  { mode: 0o755 },
);
const say = (text: string) => writeFileSync(`${mountScript}.say`, text);
const source = openDirectory(bed.dir("source"));
const target = openDirectory(bed.dir("target"));
afterAll(() => {
  source.close();
  target.close();
});

async function bindError(mounter: CommandMounter): Promise<MountCommandError | undefined> {
  try {
    await mounter.bindMount({ fd: source.fd, path: "/source" }, { fd: target.fd, path: "/target" });
    return undefined;
  } catch (error) {
    if (error instanceof MountCommandError) return error;
    throw error;
  }
}

/**
 * The descriptors a command's stderr can leave behind: pipes and files of no name. Others come
 * and go with what earlier test files started in this process, and are not counted.
 */
function openDescriptors(): string[] {
  return readdirSync("/proc/self/fd")
    .map((fd) => {
      try {
        return readlinkSync(`/proc/self/fd/${fd}`);
      } catch {
        return "";
      }
    })
    .filter(
      (target) =>
        target.startsWith("pipe:") || target.includes("(deleted)") || target.startsWith("/memfd:"),
    );
}

describe.each([
  ["a file of no name", [bed.dir("stderr")], true],
  ["a pipe (no directory takes a file)", [join(bed.root, "missing")], false],
])("stderr to %s", (_, directories, files) => {
  const mounter = new CommandMounter(mountScript, "umount", 30_000, 16, directories);

  test("each failure's message is its own, and a success's output is not carried over", async () => {
    say("mount: first failure");
    expect((await bindError(mounter))?.message).toEndWith(
      "exited with status 32: mount: first failure",
    );
    say("ok:mount: a warning of a success");
    expect(await bindError(mounter)).toBeUndefined();
    say("ok:");
    expect(await bindError(mounter)).toBeUndefined();
    // The empty file of the last success is kept for the next command.
    const kept = openDescriptors().filter((link) => link.startsWith(`${directories[0]}/#`));
    expect(kept).toHaveLength(files ? 1 : 0);
    say("mount: second failure");
    const second = await bindError(mounter);
    expect(second?.stderr).toBe("mount: second failure");
  });

  test("a flood is cut, and failures leave no descriptor behind", async () => {
    say(`mount: ${"x".repeat(10_000)}`);
    expect((await bindError(mounter))?.stderr).toHaveLength(2000);
    const before = openDescriptors().length;
    for (let i = 0; i < 10; i++) expect(await bindError(mounter)).toBeInstanceOf(MountCommandError);
    expect(openDescriptors().length).toBe(before);
  });
});
