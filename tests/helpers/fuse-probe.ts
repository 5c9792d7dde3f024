// A process that asks the driver's mount gate about directories, for tests where a FUSE server
// (./fuse.ts) is silent: a call that reached the server would hold the asking process in the
// kernel, so the asking is done here, in a child the test can wait for with a deadline, while
// the test's own process stays free to end the server and report the hang.
//
//   bun tests/helpers/fuse-probe.ts
//
// Reads commands, a line each, on stdin, and answers each with one line of JSON:
//   walk PATH            the trusted walk to PATH (the agent's directory), with this process's gate
//   entry DIR NAME       openEntry(DIR, NAME): a pod's target, with this process's gate
//   judge PATH           the mount of PATH judged by this process's gate: its type, source, place
//   table PATH open|closed   PATH judged by a gate without unique mount ids (the table fallback)
//   counts               how often each gate read the table and called statmount
// An answer is {"ok": <what was found>} or {"refused": <message>}.
import { closeSync, constants, openSync } from "node:fs";
import type { Subprocess } from "bun";
import { O_PATH, openDirectory, openEntry } from "../../src/linux/descriptors.ts";
import { fdMount, gate, MountGate, UntrustedMountError } from "../../src/linux/gate.ts";
import { openTrustedDirectory, UnsafePathError } from "../../src/linux/trusted-path.ts";
import { PATIENCE_MS, waitFor } from "./wait.ts";

export type ProbeAnswer = { ok: unknown } | { refused: string };

/** The test's side: a probe process, and its answers. */
export class Probe {
  private output = "";
  private lines = 0;
  private readonly proc: Subprocess<"pipe", "pipe", "inherit">;

  constructor() {
    const proc = Bun.spawn([process.execPath, import.meta.path], {
      stdin: "pipe",
      stdout: "pipe",
      stderr: "inherit",
    });
    this.proc = proc;
    void (async () => {
      const decoder = new TextDecoder();
      for await (const chunk of proc.stdout) this.output += decoder.decode(chunk);
    })();
  }

  /**
   * The answer to `command`; after `patienceMs` without one, `onHang` runs (it should end the
   * silent servers, which releases the probe) and the call fails, saying the command hung.
   */
  async ask(
    command: string,
    onHang: () => Promise<void>,
    patienceMs = PATIENCE_MS,
  ): Promise<ProbeAnswer> {
    const index = this.lines++;
    this.proc.stdin.write(`${command}\n`);
    await this.proc.stdin.flush();
    try {
      const line = await waitFor(
        `the probe's answer to ${command}`,
        () => {
          if (this.proc.exitCode !== null)
            throw new Error(`the probe exited with ${this.proc.exitCode}`);
          const lines = this.output.split("\n");
          return index < lines.length - 1 ? lines[index] : undefined;
        },
        patienceMs,
      );
      return JSON.parse(line as string);
    } catch (error) {
      await onHang();
      throw new Error(`${command} hung (or failed): ${error}`);
    }
  }

  async stop(): Promise<void> {
    if (this.proc.exitCode === null) this.proc.kill("SIGKILL");
    await this.proc.exited;
  }
}

// The probe's side.
const fallback = new MountGate({ kernel: false });

function answer(command: string): ProbeAnswer {
  const [name, ...args] = command.split(" ");
  try {
    if (name === "walk") {
      const found = openTrustedDirectory(args[0] as string, { followLinks: false });
      if (found.kind !== "directory") return { ok: `${found.kind} ${found.at}` };
      found.handle.close();
      return { ok: "directory" };
    }
    if (name === "entry") {
      using parent = openDirectory(args[0] as string);
      openEntry(parent, args[1] as string).close();
      return { ok: "directory" };
    }
    if (name === "judge") {
      const fd = openSync(args[0] as string, O_PATH | constants.O_DIRECTORY);
      try {
        const { fsType, source, mountPoint } = gate.judge(fdMount(fd), {
          at: args[0] as string,
          fix: "",
          open: true,
        });
        return { ok: { fsType, source, mountPoint } };
      } finally {
        closeSync(fd);
      }
    }
    if (name === "table") {
      const fd = openSync(args[0] as string, O_PATH | constants.O_DIRECTORY);
      try {
        const where = { at: args[0] as string, fix: "", open: args[1] === "open" };
        return { ok: fallback.judge(fallback.mountOf(fd), where).fsType };
      } finally {
        closeSync(fd);
      }
    }
    if (name === "counts") {
      return {
        ok: { reads: gate.reads, statmounts: gate.statmounts, fallbackReads: fallback.reads },
      };
    }
    throw new Error(`unknown command ${command}`);
  } catch (error) {
    if (error instanceof UntrustedMountError || error instanceof UnsafePathError) {
      return { refused: error.message };
    }
    throw error;
  }
}

if (import.meta.main) {
  const decoder = new TextDecoder();
  let pending = "";
  for await (const chunk of Bun.stdin.stream()) {
    pending += decoder.decode(chunk);
    const commands = pending.split("\n");
    pending = commands.pop() ?? "";
    for (const command of commands) {
      if (command !== "") process.stdout.write(`${JSON.stringify(answer(command))}\n`);
    }
  }
}
