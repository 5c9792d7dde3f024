import type { Registration } from "../gen/pluginregistration/v1/api_pb.ts";
import type { Logger } from "../ops/log.ts";
import { LogKey } from "../ops/log-keys.ts";
import type { ServiceHandlers } from "../rpc/adapter.ts";

/** The CSI versions the kubelet may speak to this driver. */
const SUPPORTED_VERSIONS = ["1.0.0"];

/**
 * The kubelet's plugin registration service, for nodes without the node-driver-registrar
 * sidecar: the kubelet's plugin watcher finds `<plugin-name>-reg.sock` in its plugins_registry
 * directory, asks who the plugin is and where its CSI socket is, and says whether it registered it.
 */
export function registrationHandlers(
  pluginName: string,
  endpoint: string,
  logger: Logger,
): ServiceHandlers<typeof Registration> {
  return {
    getInfo: async () => ({
      type: "CSIPlugin",
      name: pluginName,
      endpoint,
      supportedVersions: SUPPORTED_VERSIONS,
    }),
    notifyRegistrationStatus: async (status) => {
      if (status.pluginRegistered) {
        logger.info("registered with the kubelet", {
          [LogKey.pluginName]: pluginName,
          [LogKey.endpoint]: endpoint,
        });
      } else {
        logger.error("the kubelet refused to register the driver", {
          [LogKey.pluginName]: pluginName,
          [LogKey.endpoint]: endpoint,
          [LogKey.error]: status.error,
        });
      }
      return {};
    },
  };
}
