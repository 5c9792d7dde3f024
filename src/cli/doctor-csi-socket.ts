// The doctor's checks of the CSI socket: its directory, and the driver answering on it (its name
// and the --allow rules it enforces).

import { accessSync, constants, existsSync } from "node:fs";
import { dirname } from "node:path";
import { MANIFEST_ALLOW } from "../csi/identity.ts";
import { PodPolicy } from "../csi/policy.ts";
import { Identity } from "../gen/csi/v1/csi_pb.ts";
import { connects } from "../ops/agent.ts";
import { createClient } from "../rpc/client.ts";
import { SOCKET_DIRECTORY_FIX, socketDirectoryProblem } from "../rpc/socket-file.ts";
import { type Check, type DoctorOptions, fail, pass, skip } from "./doctor-checks.ts";

export function socketDirectoryCheck(csiSocketPath: string): Check {
  const name = "CSI socket directory is writable";
  let dir = dirname(csiSocketPath);
  // A missing directory is created at start: what counts is its nearest existing ancestor.
  while (!existsSync(dir) && dir !== "/") dir = dirname(dir);
  try {
    accessSync(dir, constants.W_OK);
    return pass(
      name,
      dir === dirname(csiSocketPath) ? dir : `${dir} (${dirname(csiSocketPath)} will be created)`,
    );
  } catch (error) {
    return fail(
      name,
      `${dir}: ${(error as Error).message}`,
      "mount a writable volume (hostPath of the kubelet's plugins/<driver> directory) at the socket's directory",
    );
  }
}

export function socketDirectorySafetyCheck(csiSocketPath: string): Check {
  const name = "CSI socket directory is safe";
  const dir = dirname(csiSocketPath);
  const problem = socketDirectoryProblem(dir);
  return problem
    ? fail(name, problem, SOCKET_DIRECTORY_FIX)
    : pass(name, `${dir}: nobody but the driver's user can replace the socket`);
}

export async function driverChecks(options: DoctorOptions): Promise<Check[]> {
  const address = `unix://${options.csiSocketPath}`;
  const refusal = await connects(options.csiSocketPath);
  if (refusal !== undefined) {
    return [
      fail(
        "driver answers on the CSI socket",
        `${options.csiSocketPath}: ${refusal}`,
        "start the driver with this --csi-socket-path, and check its log",
      ),
    ];
  }
  const client = createClient(Identity, address);
  const deadline = () => ({ deadline: Date.now() + 5000 });
  const checks: Check[] = [];
  try {
    const info = await client.getPluginInfo({}, deadline());
    checks.push(
      info.name === options.pluginName
        ? pass("driver answers GetPluginInfo", `${info.name} ${info.vendorVersion}`)
        : fail(
            "driver answers GetPluginInfo",
            `it is ${info.name}, not ${options.pluginName}`,
            "make --plugin-name, the CSIDriver object and the registrar's socket path agree",
          ),
    );
    checks.push(driverPolicyCheck(info.manifest[MANIFEST_ALLOW], options.policy));
    const probed = await client.probe({}, deadline());
    checks.push(
      probed.ready === false
        ? fail("driver answers Probe", "not ready", "check the driver's log")
        : pass("driver answers Probe", "ready"),
    );
  } catch (error) {
    const { details, message } = error as { details?: string; message: string };
    checks.push(
      fail("driver answers on the CSI socket", details ?? message, "check the driver's log"),
    );
  } finally {
    client.close();
  }
  return checks;
}

/**
 * The --allow rules in force: the driver's own (its GetPluginInfo manifest), checked against the
 * rules the doctor was given, if any.
 */
export function driverPolicyCheck(reported: string | undefined, given?: PodPolicy): Check {
  const name = "pod policy in force";
  if (reported === undefined) {
    return skip(
      name,
      "the driver does not report its --allow rules (another driver, or an older one)",
    );
  }
  let inForce: PodPolicy;
  try {
    inForce = PodPolicy.parse(reported === "" ? [] : [reported]);
  } catch (error) {
    return fail(name, (error as Error).message, "check the driver's version and its log");
  }
  if (given && !given.sameRules(inForce)) {
    return fail(
      name,
      `the driver admits ${inForce.describe()}, not ${given.describe()} as --allow says here`,
      "restart the driver with the intended --allow rules (the DaemonSet's args, the allow setting of the deployment)",
    );
  }
  return pass(name, `the driver admits ${inForce.describe()}`);
}

/** The --allow rules given to the doctor, when it does not ask the driver for its own. */
export function givenPolicyCheck(given?: PodPolicy): Check {
  const name = "pod policy in force";
  return given
    ? pass(name, `${given.describe()}, as --allow says here (--csi-socket-path asks the driver)`)
    : skip(
        name,
        "unknown here: give --csi-socket-path so that the driver says, or its --allow rules",
      );
}
