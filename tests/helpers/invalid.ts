// Publish requests the driver must refuse with INVALID_ARGUMENT, each with the words its message
// must hold. Unit tests send them to the handlers; end-to-end tests send them over the socket.
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import {
  VolumeCapability_AccessMode_Mode as Mode,
  type NodePublishVolumeRequest,
  VolumeCapabilitySchema,
} from "../../src/gen/csi/v1/csi_pb.ts";
import { type PodVolume, publishRequest } from "./kubelet.ts";

type CapabilityInit = MessageInitShape<typeof VolumeCapabilitySchema>;

function mountCapability(
  mount: { fsType?: string; mountFlags?: string[] },
  mode: Mode = Mode.SINGLE_NODE_WRITER,
): CapabilityInit {
  return { accessType: { case: "mount", value: mount }, accessMode: { mode } };
}

export function invalidPublishRequests(
  volume: PodVolume,
): [string, NodePublishVolumeRequest, string][] {
  const valid = publishRequest(volume);
  const withCapability = (init: CapabilityInit | undefined): NodePublishVolumeRequest => ({
    ...valid,
    volumeCapability: init === undefined ? undefined : create(VolumeCapabilitySchema, init),
  });
  const { "csi.storage.k8s.io/ephemeral": _, ...persistentContext } = valid.volumeContext;
  const target = volume.targetPath;
  return [
    ["no volume_id", { ...valid, volumeId: "" }, "volume_id is required"],
    [
      "a volume_id over 128 bytes",
      { ...valid, volumeId: "v".repeat(129) },
      "longer than 128 bytes",
    ],
    ["no target_path", { ...valid, targetPath: "" }, "target_path is required"],
    ["a relative target_path", { ...valid, targetPath: "some/path" }, "must be an absolute path"],
    ["a target_path with ..", { ...valid, targetPath: `${target}/../../../x/mount` }, "'..'"],
    ["a target_path with NUL", { ...valid, targetPath: `${target}\0` }, "NUL byte"],
    ["a target_path outside a pod", { ...valid, targetPath: "/dev/shm" }, "kubelet CSI volume"],
    [
      "a target_path with a 256-byte name",
      { ...valid, targetPath: target.replace(volume.volumeName, "v".repeat(256)) },
      "target_path has a name longer than 255 bytes",
    ],
    ["no volume_capability", withCapability(undefined), "volume_capability is required"],
    [
      "the block access type",
      withCapability({
        accessType: { case: "block", value: {} },
        accessMode: { mode: Mode.SINGLE_NODE_WRITER },
      }),
      "volume_capability.block is not supported",
    ],
    [
      "no access type",
      withCapability({ accessMode: { mode: Mode.SINGLE_NODE_WRITER } }),
      "volume_capability.mount is required",
    ],
    [
      "an fs_type",
      withCapability(mountCapability({ fsType: "ext4" })),
      'fs_type must be empty, got "ext4"',
    ],
    [
      "mount flags",
      withCapability(mountCapability({ mountFlags: ["password=hunter2"] })),
      "mount_flags must be empty",
    ],
    [
      "no access mode",
      withCapability({ accessType: { case: "mount", value: {} } }),
      "volume_capability.access_mode is required",
    ],
    [
      "access mode UNKNOWN",
      withCapability(mountCapability({}, Mode.UNKNOWN)),
      "access_mode.mode is required",
    ],
    [
      "access mode SINGLE_NODE_READER_ONLY",
      withCapability(mountCapability({}, Mode.SINGLE_NODE_READER_ONLY)),
      "SINGLE_NODE_READER_ONLY is not supported",
    ],
    [
      "an access mode from the future",
      withCapability(mountCapability({}, 42 as Mode)),
      "42 is not a known access mode",
    ],
    [
      "readonly false",
      { ...valid, readonly: false },
      "pod.spec.volumes[].csi.readOnly must be set to 'true'",
    ],
    [
      "no ephemeral context",
      { ...valid, volumeContext: persistentContext },
      "only ephemeral inline volumes are supported",
    ],
    [
      "ephemeral false",
      {
        ...valid,
        volumeContext: { ...persistentContext, "csi.storage.k8s.io/ephemeral": "false" },
      },
      "only ephemeral inline volumes are supported",
    ],
  ];
}
