// The doctor's checks of the kubelet's side: its directory, the registration directory, the
// plugin name the kubelet knows the driver by.

import { closeSync, constants, existsSync, openSync, statSync } from "node:fs";
import { join } from "node:path";
import { readMountId } from "../linux/descriptors.ts";
import { findMount } from "../linux/mountinfo.ts";
import { type Check, fail, pass, skip } from "./doctor-checks.ts";
import { validatePluginName } from "./settings.ts";

/**
 * Whether this process runs in the driver's container: PID 1 of its PID namespace is this very
 * executable (the doctor is the driver's binary, run by `kubectl exec`).
 */
export function inDriverContainer(): boolean {
  try {
    const init = statSync("/proc/1/exe");
    const self = statSync("/proc/self/exe");
    return init.dev === self.dev && init.ino === self.ino;
  } catch {
    // Not allowed to look at PID 1: not the driver's own container, where the doctor is root.
    return false;
  }
}

/**
 * The kubelet's registration directory. node-driver-registrar registers the driver and alone
 * mounts it, so in the driver's container its absence says nothing: skipped, saying why. With
 * built-in registration the driver needs it itself.
 */
export function registrationDirectoryCheck(
  registrationDir: string,
  builtInRegistration = false,
  driverContainer = inDriverContainer(),
): Check {
  const name = "registration directory exists";
  if (existsSync(registrationDir)) return pass(name, registrationDir);
  if (driverContainer && !builtInRegistration) {
    return skip(
      name,
      `${registrationDir} is not mounted here: this is the driver's container (its PID 1 is the driver), and only node-driver-registrar mounts the registration directory; check it in the registrar's container or its log, or run the doctor on the node`,
    );
  }
  return fail(
    name,
    `${registrationDir} does not exist`,
    "mount the kubelet's plugins_registry directory (hostPath) where node-driver-registrar or --kubelet-registration-dir expects it; on a node, check the kubelet's --root-dir",
  );
}

export function pluginNameCheck(pluginName: string): Check {
  const problem = validatePluginName(pluginName);
  return problem
    ? fail(
        "plugin name is valid",
        problem,
        "set --plugin-name to the CSIDriver object's name, e.g. csi.spiffe.io",
      )
    : pass("plugin name is valid", pluginName);
}

export async function kubeletChecks(kubeletDir: string): Promise<Check[]> {
  const podsDir = join(kubeletDir, "pods");
  if (!existsSync(podsDir)) {
    return [
      fail(
        "kubelet pods directory exists",
        `${podsDir} does not exist`,
        "mount the kubelet's root directory (/var/lib/kubelet, or the distribution's, e.g. /var/snap/microk8s/common/var/lib/kubelet) into the driver, and pass it as --kubelet-dir",
      ),
    ];
  }
  const name = "kubelet pods directory is a shared mount";
  let propagation: string[];
  let where: string;
  try {
    const fd = openSync(podsDir, constants.O_RDONLY | constants.O_DIRECTORY);
    let mountId: number;
    try {
      mountId = readMountId(fd);
    } finally {
      closeSync(fd);
    }
    const mount = await findMount(mountId);
    if (!mount) throw new Error(`mount ${mountId} is not in /proc/self/mountinfo`);
    propagation = mount.propagation;
    where = mount.mountPoint;
  } catch (error) {
    return [
      pass("kubelet pods directory exists", podsDir),
      fail(name, (error as Error).message, "check that /proc is mounted"),
    ];
  }
  const shared = propagation.find((field) => field.startsWith("shared:"));
  return [
    pass("kubelet pods directory exists", podsDir),
    shared
      ? pass(name, `${podsDir} is on ${where} (${propagation.join(" ")})`)
      : fail(
          name,
          `${podsDir} is on ${where}, which is ${propagation.length > 0 ? propagation.join(" ") : "private"}: mounts made here never reach the kubelet`,
          "mount the kubelet directory into the driver's container with mountPropagation: Bidirectional; on the host it must itself be shared (mount --make-rshared /, systemd's default)",
        ),
  ];
}
