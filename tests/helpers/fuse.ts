// A FUSE file system for tests (./fuse-server.ts), mounted in the test's mount namespace, that
// can be told to stop answering and to answer again.
import { resolve } from "node:path";
import type { Subprocess } from "bun";
import { PATIENCE_MS, waitFor } from "./wait.ts";

const SERVER = resolve(import.meta.dir, "fuse-server.ts");

export class FuseMount {
  private output = "";
  private lines = 0;

  private constructor(
    readonly mountPoint: string,
    private readonly proc: Subprocess<"pipe", "pipe", "pipe">,
  ) {
    void (async () => {
      const decoder = new TextDecoder();
      for await (const chunk of proc.stdout) this.output += decoder.decode(chunk);
    })();
  }

  /**
   * Mounts an empty, answering file system at `mountPoint` (an existing directory). Its files
   * have no labels (ENODATA), or with `noXattrs` no extended attributes at all (ENOTSUP). With
   * `owner`, the mount is that user's, without allow_other: root gets EACCES from it. With
   * `rootIno`, its root's attributes give that inode number (a server may give any).
   */
  static async start(
    mountPoint: string,
    options: { readOnly?: boolean; noXattrs?: boolean; owner?: number; rootIno?: number } = {},
  ): Promise<FuseMount> {
    const proc = Bun.spawn(
      [
        process.execPath,
        SERVER,
        mountPoint,
        options.readOnly ? "ro" : "rw",
        options.noXattrs ? "no-xattrs" : "no-labels",
        ...(options.owner === undefined ? [] : [`owner=${options.owner}`]),
        ...(options.rootIno === undefined ? [] : [`ino=${options.rootIno}`]),
      ],
      { stdin: "pipe", stdout: "pipe", stderr: "pipe" },
    );
    const fuse = new FuseMount(mountPoint, proc);
    await fuse.said("mounted");
    return fuse;
  }

  /** From now on, every request is read and none is answered. */
  hang(): Promise<void> {
    return this.command("hang");
  }

  /** Answers again, the requests held meanwhile first. */
  answer(): Promise<void> {
    return this.command("answer");
  }

  /** How many requests of each kind came so far, by opcode (21 SETXATTR, 22 GETXATTR, ...). */
  async counts(): Promise<Record<string, number>> {
    this.proc.stdin.write("counts\n");
    await this.proc.stdin.flush();
    return JSON.parse((await this.nextLine()).replace(/^counts /, ""));
  }

  /**
   * Ends the server, which aborts the connection (whoever still waits gets ENOTCONN), and
   * unmounts the file system.
   */
  async stop(): Promise<void> {
    if (this.proc.exitCode === null) this.proc.kill("SIGKILL");
    await this.proc.exited;
    Bun.spawnSync(["umount", "-l", this.mountPoint]);
  }

  private async command(name: "hang" | "answer"): Promise<void> {
    this.proc.stdin.write(`${name}\n`);
    await this.proc.stdin.flush();
    await this.said(`${name}ing`);
  }

  /** Waits for the server's next line, which must be `line`. */
  private async said(line: string): Promise<void> {
    const got = await this.nextLine();
    if (got !== line) throw new Error(`the FUSE server said ${JSON.stringify(got)}, not ${line}`);
  }

  private nextLine(): Promise<string> {
    const index = this.lines++;
    return waitFor(
      `line ${index + 1} from the FUSE server`,
      async () => {
        if (this.proc.exitCode !== null) {
          const stderr = await new Response(this.proc.stderr).text();
          throw new Error(`the FUSE server exited with ${this.proc.exitCode}: ${stderr}`);
        }
        return this.completeLine(index);
      },
      PATIENCE_MS,
    );
  }

  private completeLine(index: number): string | undefined {
    const lines = this.output.split("\n");
    // The last piece has no newline yet: not a whole line.
    return index < lines.length - 1 ? lines[index] : undefined;
  }
}
