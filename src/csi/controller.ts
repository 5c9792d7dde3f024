import type { Controller } from "../gen/csi/v1/csi_pb.ts";
import type { ServiceHandlers } from "../rpc/adapter.ts";

/** Not advertised as a plugin capability; answers so that generic CSI tools get a correct reply. */
export function controllerHandlers(): ServiceHandlers<typeof Controller> {
  return {
    controllerGetCapabilities: async () => ({}),
  };
}
