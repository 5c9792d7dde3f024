import type { Identity } from "../gen/csi/v1/csi_pb.ts";
import type { ServiceHandlers } from "../rpc/adapter.ts";
import { VERSION } from "../version.ts";
import { formatRule, type PodPolicy } from "./policy.ts";

/** The manifest key holding the --allow rules in force, joined by commas ("" for none). */
export const MANIFEST_ALLOW = "allow";

/** `ready` says whether the driver can serve; a driver about to restart itself is not ready. */
export function identityHandlers(
  pluginName: string,
  policy?: PodPolicy,
  ready: () => boolean = () => true,
): ServiceHandlers<typeof Identity> {
  // The manifest is opaque to the kubelet; the doctor reads the policy in force from it.
  const manifest: Record<string, string> = policy
    ? { [MANIFEST_ALLOW]: policy.rules.map(formatRule).join(",") }
    : {};
  return {
    getPluginInfo: async () => ({ name: pluginName, vendorVersion: VERSION, manifest }),
    // A node-only plugin: no controller service, no topology constraints, no expansion.
    getPluginCapabilities: async () => ({}),
    // Probe backs a liveness check: it answers ready whenever the driver can serve. Whether the
    // SPIFFE agent is up is not the driver's health (restarting the driver never brings an agent
    // back); volume health reports that through NodeGetVolumeStats. A driver that waits to
    // restart itself (it sees a removed Workload API directory) is not ready.
    probe: async () => ({ ready: ready() }),
  };
}
