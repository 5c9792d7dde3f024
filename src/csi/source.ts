import { status } from "@grpc/grpc-js";
import type { DirectoryHandle } from "../linux/descriptors.ts";
import { type Inode, openConfiguredDirectory } from "../linux/inspect.ts";
import { RpcError } from "../rpc/status.ts";
import { fs, quote } from "./errors.ts";

/** The Workload API directory as the driver sees it now, held open; undefined when missing. */
export function openSourceIfThere(socketDir: string): DirectoryHandle | undefined {
  return fs(`inspecting the Workload API directory ${quote(socketDir)}`, () =>
    openConfiguredDirectory(socketDir),
  );
}

/** The Workload API directory, held open, or UNAVAILABLE saying why it cannot be published. */
export function openSource(socketDir: string): DirectoryHandle {
  const source = openSourceIfThere(socketDir);
  const problem = sourceProblem(socketDir, source);
  if (problem || !source) {
    source?.close();
    throw new RpcError(status.UNAVAILABLE, problem ?? "no Workload API directory");
  }
  return source;
}

/** Why the Workload API directory cannot be published now, or undefined when it can. */
export function sourceProblem(socketDir: string, source: Inode | undefined): string | undefined {
  if (!source) {
    return `the Workload API socket directory ${quote(socketDir)} does not exist (is the SPIFFE agent running?)`;
  }
  // The driver's own view of the directory is a removed one: in a container, the host
  // directory behind a hostPath mount was deleted and re-created after the driver started.
  // Binding it would give pods an empty, dead directory.
  if (source.nlink === 0) {
    return `the Workload API socket directory ${quote(socketDir)} was removed after the driver started, and the driver still sees the removed one; restart the driver (and mount the directory's parent into its container, so that this cannot happen)`;
  }
  return undefined;
}
