import type { Directory, TargetDirectory } from "../linux/inspect.ts";
import { failedPrecondition, fs, internal, quote } from "./errors.ts";
import type { Volume, VolumeData } from "./host.ts";

/** The target as a directory, held open; anything else there is refused. */
export function targetDirectory(
  volume: Volume,
  targetPath: string,
  operation: string,
): TargetDirectory {
  const state = fs(`${operation}: inspecting ${quote(targetPath)}`, () => volume.target());
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
export function checkInPlace(volume: Volume, target: Directory, targetPath: string): void {
  const inPlace = fs(`locating ${quote(targetPath)}`, () => volume.holds(target));
  if (!inPlace) {
    throw failedPrecondition(
      `target_path ${quote(targetPath)} was moved or removed while in use; refusing to use it`,
    );
  }
}

/** The kubelet's record in the volume directory, if it left one that can be read. */
export async function volumeRecord(
  volume: Volume,
  targetPath: string,
): Promise<VolumeData | undefined> {
  try {
    return await volume.record();
  } catch (error) {
    throw internal(
      `reading the kubelet's record beside ${quote(targetPath)}: ${(error as Error).message}`,
      error,
    );
  }
}
