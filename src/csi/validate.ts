import {
  VolumeCapability_AccessMode_Mode as AccessMode,
  type NodeGetVolumeStatsRequest,
  type NodePublishVolumeRequest,
  type NodeUnpublishVolumeRequest,
} from "../gen/csi/v1/csi_pb.ts";
import { invalid, notFound, quote } from "./errors.ts";
import { KUBELET_CSI_VOLUME_PATH } from "./kubelet.ts";

// CSI size limit for identifiers such as volume_id.
const MAX_VOLUME_ID_BYTES = 128;
// Linux PATH_MAX.
const MAX_PATH_BYTES = 4096;

export const EPHEMERAL_CONTEXT_KEY = "csi.storage.k8s.io/ephemeral";

function checkVolumeId(volumeId: string): void {
  if (!volumeId) throw invalid("volume_id is required");
  if (Buffer.byteLength(volumeId) > MAX_VOLUME_ID_BYTES) {
    throw invalid(`volume_id is longer than ${MAX_VOLUME_ID_BYTES} bytes`);
  }
}

/** Why `path` cannot be a kubelet CSI volume path, or undefined when it can. */
export function targetPathProblem(field: string, path: string): string | undefined {
  switch (true) {
    case path === "":
      return `${field} is required`;
    case path.includes("\0"):
      return `${field} must not contain a NUL byte`;
    case Buffer.byteLength(path) > MAX_PATH_BYTES:
      return `${field} is longer than ${MAX_PATH_BYTES} bytes`;
    case !path.startsWith("/"):
      return `${field} must be an absolute path, got ${quote(path)}`;
    case path.split("/").includes(".."):
      return `${field} must not contain '..' segments, got ${quote(path)}`;
    case /\/\.?\/|\/\.?$/.test(path):
      return `${field} must be a clean path (no '.' segments, doubled or trailing slashes), got ${quote(path)}`;
    case !KUBELET_CSI_VOLUME_PATH.test(path):
      return `${field} must be a kubelet CSI volume path, <kubelet-root>/pods/<pod-uid>/volumes/kubernetes.io~csi/<volume-name>/mount, got ${quote(path)}`;
    default:
      return undefined;
  }
}

export function validatePublish(req: NodePublishVolumeRequest): void {
  checkVolumeId(req.volumeId);
  const pathProblem = targetPathProblem("target_path", req.targetPath);
  if (pathProblem) throw invalid(pathProblem);
  // One check a line, in the order a reader of the request meets the fields.
  const capability = req.volumeCapability;
  if (!capability) throw invalid("volume_capability is required");
  const { accessType, accessMode } = capability;
  if (accessType.case === "block") {
    throw invalid("volume_capability.block is not supported: only the mount access type is");
  }
  if (accessType.case !== "mount") {
    throw invalid("volume_capability.mount is required (the access type must be mount)");
  }
  const { fsType, mountFlags } = accessType.value;
  if (fsType) throw invalid(`volume_capability.mount.fs_type must be empty, got ${quote(fsType)}`);
  // The flags themselves are not echoed: CSI says they may hold secrets.
  if (mountFlags.length > 0) throw invalid("volume_capability.mount.mount_flags must be empty");
  if (!accessMode) throw invalid("volume_capability.access_mode is required");
  const mode = accessMode.mode;
  if (mode === AccessMode.UNKNOWN) throw invalid("volume_capability.access_mode.mode is required");
  if (mode === AccessMode.SINGLE_NODE_READER_ONLY) {
    throw invalid("volume_capability.access_mode.mode SINGLE_NODE_READER_ONLY is not supported");
  }
  if (!(mode in AccessMode)) {
    throw invalid(`volume_capability.access_mode.mode ${mode} is not a known access mode`);
  }
  if (!req.readonly) throw invalid("pod.spec.volumes[].csi.readOnly must be set to 'true'");
  if (req.volumeContext[EPHEMERAL_CONTEXT_KEY] !== "true") {
    throw invalid(
      `only ephemeral inline volumes are supported: volume_context ${EPHEMERAL_CONTEXT_KEY} must be "true"`,
    );
  }
}

export function validateUnpublish(req: NodeUnpublishVolumeRequest): void {
  checkVolumeId(req.volumeId);
  const pathProblem = targetPathProblem("target_path", req.targetPath);
  if (pathProblem) throw invalid(pathProblem);
}

/**
 * A missing field is the caller's mistake (INVALID_ARGUMENT); a path that cannot name a volume
 * this driver published (relative, outside the kubelet's layout) names no volume: NOT_FOUND.
 */
export function validateVolumeStats(req: NodeGetVolumeStatsRequest): void {
  checkVolumeId(req.volumeId);
  if (!req.volumePath) throw invalid("volume_path is required");
  if (req.volumePath.includes("\0")) throw invalid("volume_path must not contain a NUL byte");
  // Any other reason the path cannot be a kubelet volume path means no volume is there.
  const pathProblem = targetPathProblem("volume_path", req.volumePath);
  if (pathProblem) throw notFound(req.volumePath, pathProblem);
}
