import { opendir } from "node:fs/promises";
import { type DirectoryHandle, viewDirectory } from "../linux/descriptors.ts";
import { isErrno } from "../linux/errno.ts";
import type { Inode } from "../linux/inspect.ts";
import { TARGET_NAME } from "./kubelet.ts";
import { ABNORMAL_REASONS, type AbnormalReason, mountProblem } from "./stats.ts";

// A census gives up on what has not answered by then: those volumes count as unresponsive.
const CENSUS_TIMEOUT_MS = 1_000;
// Volumes looked at together: the thread pool also serves the CSI calls' file reads.
const CONCURRENCY = 4;

export interface VolumeCounts {
  /** Targets that show the Workload API directory now. */
  published: number;
  /** The other published volumes, by reason. */
  abnormal: Record<AbnormalReason, number>;
}

interface Held {
  handle: DirectoryHandle;
  /** Censuses looking at it now: it is closed once it is dropped and none is. */
  users: number;
  dropped: boolean;
}

const TIMEOUT = Symbol("timeout");

/**
 * The published volumes, each by its volume directory held open (a descriptor each), and their
 * census: what each target shows now, looked at through that descriptor and off the event loop,
 * in at most a second, as the stats code judges a volume.
 */
export class PublishedVolumes {
  private readonly held = new Map<string, Held>();
  // Volumes whose last check has not returned (a hung file system): not checked again until it
  // does, so that no census adds to the threads it holds.
  private readonly checking = new Set<string>();
  private sourceCheck: Promise<Inode | undefined> | undefined;

  constructor(private readonly socketDir: string) {}

  has(key: string): boolean {
    return this.held.has(key);
  }

  /** Holds `handle` as the volume `key`'s directory; closes it if that volume is held already. */
  add(key: string, handle: DirectoryHandle): void {
    if (this.held.has(key)) handle.close();
    else this.held.set(key, { handle, users: 0, dropped: false });
  }

  delete(key: string): void {
    const held = this.held.get(key);
    if (!held) return;
    this.held.delete(key);
    held.dropped = true;
    release(held, 0);
  }

  /** What every published volume's target shows now. */
  async count(): Promise<VolumeCounts> {
    const counts: VolumeCounts = {
      published: 0,
      abnormal: Object.fromEntries(ABNORMAL_REASONS.map((reason) => [reason, 0])) as Record<
        AbnormalReason,
        number
      >,
    };
    const tally = (reason: AbnormalReason | undefined) => {
      if (reason) counts.abnormal[reason]++;
      else counts.published++;
    };
    const queue = [...this.held].map(([key, held]) => {
      held.users++;
      return { key, held };
    });
    const deadline = performance.now() + CENSUS_TIMEOUT_MS;
    const expired = new Promise<typeof TIMEOUT>((resolve) =>
      setTimeout(resolve, CENSUS_TIMEOUT_MS, TIMEOUT).unref(),
    );
    let source: Inode | undefined | typeof TIMEOUT;
    try {
      this.sourceCheck ??= sourceInode(this.socketDir).finally(() => {
        this.sourceCheck = undefined;
      });
      source = await Promise.race([this.sourceCheck, expired]);
    } catch {
      // The directory is there but cannot be looked at: nor can what the targets show of it.
      for (const { held } of queue.splice(0)) {
        release(held, 1);
        tally("unreadable");
      }
    }
    const look = async () => {
      for (let next = queue.shift(); next; next = queue.shift()) {
        const { key, held } = next;
        if (source === TIMEOUT || this.checking.has(key) || performance.now() >= deadline) {
          release(held, 1);
          tally("unresponsive");
          continue;
        }
        this.checking.add(key);
        const check = targetProblem(held.handle, source).finally(() => {
          this.checking.delete(key);
          release(held, 1);
        });
        const reason = await Promise.race([check, expired]);
        tally(reason === TIMEOUT ? "unresponsive" : reason);
      }
    };
    await Promise.all(Array.from({ length: CONCURRENCY }, look));
    return counts;
  }
}

function release(held: Held, uses: number): void {
  held.users -= uses;
  if (held.dropped && held.users === 0) held.handle.close();
}

/** The Workload API directory's identity now; undefined when it does not exist. */
async function sourceInode(socketDir: string): Promise<Inode | undefined> {
  try {
    return await viewDirectory(socketDir, true, async ({ dev, ino, nlink }) => ({
      dev,
      ino,
      nlink,
    }));
  } catch (error) {
    if (isErrno(error, "ENOENT") || isErrno(error, "ENOTDIR")) return undefined;
    throw error;
  }
}

/** What is wrong with the target in the volume directory `volume`; undefined when nothing is. */
async function targetProblem(
  volume: DirectoryHandle,
  source: Inode | undefined,
): Promise<AbnormalReason | undefined> {
  try {
    return await viewDirectory(volume.entry(TARGET_NAME), false, async (target) => {
      const problem = mountProblem(target.mountId !== volume.mountId, target, source);
      if (problem) return problem;
      // Listable: one entry read, however many the directory holds.
      const listing = await opendir(target.path);
      try {
        await listing.read();
      } finally {
        await listing.close();
      }
      return undefined;
    });
  } catch (error) {
    // Nothing there, a link, or not a directory: not a target this driver published.
    if (isErrno(error, "ENOENT") || isErrno(error, "ELOOP") || isErrno(error, "ENOTDIR")) {
      return "target_gone";
    }
    return "unreadable";
  }
}
