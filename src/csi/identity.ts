import type { Identity } from "../gen/csi/v1/csi_pb.ts";
import type { ServiceHandlers } from "../rpc/adapter.ts";
import { VERSION } from "../version.ts";

/** `ready` says whether the driver can serve; a driver about to restart itself is not ready. */
export function identityHandlers(
  pluginName: string,
  ready: () => boolean = () => true,
): ServiceHandlers<typeof Identity> {
  return {
    getPluginInfo: async () => ({ name: pluginName, vendorVersion: VERSION }),
    // A node-only plugin: no controller service, no topology constraints, no expansion.
    getPluginCapabilities: async () => ({}),
    // Probe backs a liveness check: it answers ready whenever the driver can serve. Whether the
    // SPIFFE agent is up is not the driver's health (restarting the driver never brings an agent
    // back); volume health reports that through NodeGetVolumeStats. A driver that waits to
    // restart itself (it sees a removed Workload API directory) is not ready.
    probe: async () => ({ ready: ready() }),
  };
}
