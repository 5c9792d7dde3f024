import { chmodSync, readdirSync } from "node:fs";
import { dirname } from "node:path";
import type { Directory } from "../linux/inspect.ts";
import { directoryInode } from "../linux/inspect.ts";
import { findMount } from "../linux/mountinfo.ts";
import { fs, quote } from "./errors.ts";
import type { NodeHost, Source } from "./host.ts";
import { openVolumeDir } from "./kubelet.ts";
import { inspectSource, type SourceOptions } from "./source.ts";

/** The node service's machine: this one (see NodeHost in ./host.ts). */
export class Machine implements NodeHost {
  constructor(private readonly source: SourceOptions) {}

  openVolume(targetPath: string) {
    return openVolumeDir(targetPath);
  }

  openSource(): Source {
    return inspectSource(this.source);
  }

  isEmpty(dir: Directory): boolean {
    return readdirSync(dir.path).length === 0;
  }

  chmod(dir: Directory, mode: number): void {
    // Through the handle: the directory that was opened, not whatever the name leads to now.
    chmodSync(dir.path, mode);
  }

  sourceParentDevice(): number | undefined {
    const parent = dirname(this.source.workloadApiSocketDir);
    return fs(`inspecting ${quote(parent)}`, () => directoryInode(parent))?.dev;
  }

  async describeMount(mountId: number): Promise<string> {
    try {
      const mount = await findMount(mountId);
      if (mount) {
        return `${mount.fsType} ${mount.source}, root ${mount.root}, device ${mount.device}`;
      }
    } catch {
      // Only an error message is at stake.
    }
    return `mount id ${mountId}`;
  }
}
