import type { Identity } from "../gen/csi/v1/csi_pb.ts";
import type { ServiceHandlers } from "../rpc/adapter.ts";
import { VERSION } from "../version.ts";

export function identityHandlers(pluginName: string): ServiceHandlers<typeof Identity> {
  return {
    getPluginInfo: async () => ({ name: pluginName, vendorVersion: VERSION }),
    // A node-only plugin: no controller service, no topology constraints, no expansion.
    getPluginCapabilities: async () => ({}),
    // Probe backs a liveness check: it answers ready whenever the driver can serve. Whether the
    // SPIFFE agent is up is not the driver's health (restarting the driver never brings an agent
    // back); volume health reports that through NodeGetVolumeStats.
    probe: async () => ({ ready: true }),
  };
}
