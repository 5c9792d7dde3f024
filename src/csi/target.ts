import type { DirectoryHandle } from "../linux/descriptors.ts";
import { type DirectoryState, inspectEntry, type TargetState } from "../linux/inspect.ts";
import { failedPrecondition, fs, internal, quote } from "./errors.ts";
import { readVolumeData, TARGET_NAME, type VolumeData, type VolumeDirectory } from "./kubelet.ts";

/** Closes the handle a directory state holds, if it holds one. */
export function release(state: TargetState | undefined): void {
  if (state?.kind === "directory") state.handle.close();
}

/** The target as a directory, held open; anything else there is refused. */
export function directoryAt(
  volume: VolumeDirectory,
  targetPath: string,
  operation: string,
): DirectoryState {
  const state = fs(`${operation}: inspecting ${quote(targetPath)}`, () =>
    inspectEntry(volume.handle, TARGET_NAME),
  );
  switch (state.kind) {
    case "directory":
      return state;
    case "symlink":
      // A symbolic link could redirect the bind mount anywhere on the node.
      throw failedPrecondition(
        `target_path ${quote(targetPath)} is a symbolic link; refusing to use it`,
      );
    case "not-directory":
      throw failedPrecondition(`target_path ${quote(targetPath)} exists and is not a directory`);
    case "missing":
      throw internal(`${operation}: target_path ${quote(targetPath)} disappeared while in use`);
  }
}

/** Refuses to go on when the target is no longer where the walk found it. */
export function checkInPlace(
  volume: VolumeDirectory,
  target: DirectoryHandle,
  targetPath: string,
): void {
  const inPlace = fs(`locating ${quote(targetPath)}`, () => volume.holdsTarget(target));
  if (!inPlace) {
    throw failedPrecondition(
      `target_path ${quote(targetPath)} was moved or removed while in use; refusing to use it`,
    );
  }
}

/** The kubelet's record in the volume directory, if it left one that can be read. */
export async function volumeRecord(
  volume: VolumeDirectory,
  targetPath: string,
): Promise<VolumeData | undefined> {
  try {
    return await readVolumeData(volume.handle);
  } catch (error) {
    throw internal(
      `reading the kubelet's record beside ${quote(targetPath)}: ${(error as Error).message}`,
      error,
    );
  }
}
