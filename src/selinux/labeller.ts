import { readdirSync } from "node:fs";
import { join } from "node:path";
import { isErrno } from "../linux/errno.ts";
import type { Logger } from "../ops/log.ts";
import { LogKey } from "../ops/log-keys.ts";
import { getLabel, setLabel, XattrError } from "./xattr.ts";

/**
 * Keeps the Workload API directory and every entry directly in it (the agent's socket, links
 * such as SPIRE's `api.sock`, labelled themselves) labelled with the context. Nothing outside the
 * directory, and nothing below its subdirectories, is touched. Each check reads every label
 * (one readdir and one lgetxattr per entry: microseconds) and sets only those that differ, then
 * reads them back, so a directory or socket the agent re-created is labelled again.
 */
export class Labeler {
  constructor(
    private readonly socketDir: string,
    private readonly context: string,
    private readonly logger?: Logger,
  ) {}

  /** Labels what lacks the label; says why it cannot, or undefined when all is labelled. */
  ensure(): string | undefined {
    let entries: string[];
    try {
      entries = readdirSync(this.socketDir);
    } catch (error) {
      // A missing directory is reported by the publish itself, as UNAVAILABLE.
      if (isErrno(error, "ENOENT")) return undefined;
      return this.problem(error);
    }
    const labelled: string[] = [];
    try {
      // `/.`: a link at the directory's own path is followed, as the bind mount follows it.
      if (this.label(`${this.socketDir}/.`)) labelled.push(this.socketDir);
      for (const name of entries) {
        const path = join(this.socketDir, name);
        if (this.label(path)) labelled.push(path);
      }
    } catch (error) {
      return this.problem(error);
    }
    if (labelled.length > 0) {
      this.logger?.info("labelled for SELinux", {
        [LogKey.context]: this.context,
        [LogKey.paths]: labelled,
      });
    }
    return undefined;
  }

  /** Sets the label where it differs; true if it did. An entry gone meanwhile is skipped. */
  private label(path: string): boolean {
    try {
      if (getLabel(path) === this.context) return false;
      setLabel(path, this.context);
      const now = getLabel(path);
      if (now !== this.context) {
        throw new Error(
          `${JSON.stringify(path)} reads back as ${now ?? "unlabelled"} after setting ${this.context}`,
        );
      }
      return true;
    } catch (error) {
      if (error instanceof XattrError && error.code === "ENOENT") return false;
      throw error;
    }
  }

  private problem(error: unknown): string {
    const cause = (error as Error).message;
    const readOnly = error instanceof XattrError && error.code === "EROFS";
    const fix = readOnly
      ? "mount the agent's directory read-write into the driver's container (SPIRE's Helm chart mounts it read-only)"
      : "run the driver as root in a privileged container, on a file system that stores SELinux labels";
    return `cannot label the Workload API socket directory ${JSON.stringify(this.socketDir)} for SELinux with ${this.context}: ${cause}; ${fix}, or label it on the node (chcon -h ${this.context} ${this.socketDir} ${this.socketDir}/*)`;
  }
}
