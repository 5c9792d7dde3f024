import { join } from "node:path";
import { type ArgsDef, defineCommand } from "citty";
import { asciiJson, escapeControls } from "../ops/log.ts";
import { ANY_USER, parseWorkloadUser } from "../ops/workload-user.ts";
import { unknownFlags } from "./argv.ts";
import {
  agentChecks,
  labelChecks,
  socketDirPathCheck,
  submountChecks,
} from "./doctor-agent-directory.ts";
import type { Check, DoctorOptions } from "./doctor-checks.ts";
import {
  driverChecks,
  givenPolicyCheck,
  socketDirectoryCheck,
  socketDirectorySafetyCheck,
} from "./doctor-csi-socket.ts";
import { kubeletChecks, pluginNameCheck, registrationDirectoryCheck } from "./doctor-kubelet.ts";
import { capabilityCheck, programChecks } from "./doctor-programs.ts";
import { exit, settingsOrExit } from "./exit.ts";
import { startInspector } from "./inspector.ts";
import { argsOf, ConfigError, listValues, readSetting, SETTINGS } from "./settings.ts";

/** Runs every check of a node's set-up; each yields one line. */
async function runChecks(options: DoctorOptions): Promise<Check[]> {
  const socketDir = options.workloadApiSocketDir;
  const inspector = startInspector(options.inspectTimeoutMs);
  try {
    return await allChecks(options, socketDir, inspector);
  } finally {
    inspector.close();
  }
}

async function allChecks(
  options: DoctorOptions,
  socketDir: string,
  inspector: ReturnType<typeof startInspector>,
): Promise<Check[]> {
  return [
    ...(await agentChecks(inspector, socketDir, options.workloadUser)),
    socketDirPathCheck(socketDir, options.allowSymlinkedSocketDir === true),
    ...(await labelChecks(inspector, socketDir, options.selinuxContext, !!options.recursiveBind)),
    ...(options.recursiveBind ? await submountChecks(socketDir) : []),
    socketDirectoryCheck(options.csiSocketPath),
    socketDirectorySafetyCheck(options.csiSocketPath),
    ...(await kubeletChecks(options.kubeletDir)),
    registrationDirectoryCheck(options.registrationDir, options.builtInRegistration),
    ...programChecks(),
    capabilityCheck(),
    pluginNameCheck(options.pluginName),
    ...(options.queryDriver ? await driverChecks(options) : [givenPolicyCheck(options.policy)]),
  ];
}

/**
 * One line per check (and one for its fix). Every text is escaped: a name read from the node (a
 * socket's, say) can hold escape codes that would move the cursor and turn a FAIL into a PASS on
 * a terminal.
 */
function formatChecks(checks: Check[]): string {
  return checks
    .map((check) => {
      const verdict = check.skipped ? "SKIP" : check.ok ? "PASS" : "FAIL";
      const line = `${verdict}  ${escapeControls(check.name)}: ${escapeControls(check.detail)}`;
      return check.fix ? `${line}\n      fix: ${escapeControls(check.fix)}` : line;
    })
    .join("\n");
}

// The driver's settings the doctor checks the node against, as the driver reads them.
const {
  workloadApiSocketDir,
  csiSocketPath,
  pluginName,
  allow,
  allowSymlinkedSocketDir,
  kubeletRegistrationDir,
  selinuxContext,
  recursiveBind,
  inspectTimeout,
} = SETTINGS;
// The settings the doctor reads from every word of its command line (see listValues).
const LISTS = { allow };

const args = {
  ...argsOf(
    { workloadApiSocketDir, csiSocketPath, pluginName },
    {
      workloadApiSocketDir: { help: "Directory holding the Workload API socket (required)" },
      // No default here: given, it says the driver on it is to be queried.
      csiSocketPath: {
        help: "CSI socket; when given, the driver on it is queried too",
        default: undefined,
      },
      pluginName: { help: "CSI plugin name" },
    },
  ),
  "kubelet-dir": {
    type: "string",
    description: "The kubelet's root directory",
    default: "/var/lib/kubelet",
    valueHint: "dir",
  },
  "registration-dir": {
    type: "string",
    description:
      "The kubelet's plugin registration directory (default <kubelet-dir>/plugins_registry)",
    valueHint: "dir",
  },
  ...argsOf(
    { kubeletRegistrationDir, allow },
    {
      kubeletRegistrationDir: {
        help: "The driver registers itself there (its --kubelet-registration-dir): check it, even in the driver's container",
      },
      allow: {
        help: "The driver's --allow rules: printed, and compared with the driver's own when it is queried",
      },
    },
  ),
  "workload-user": {
    type: "string",
    description:
      'Who the workloads run as: "any" non-root user, or UID[:GID] (their runAsUser and runAsGroup); the agent\'s socket must let them connect',
    default: ANY_USER,
    valueHint: "user",
  },
  ...argsOf(
    { allowSymlinkedSocketDir, selinuxContext, recursiveBind, inspectTimeout },
    {
      allowSymlinkedSocketDir: {
        help: "The driver runs with --allow-symlinked-socket-dir: symbolic links on the directory's path are followed",
      },
      selinuxContext: { help: "The SELinux label the driver gives the Workload API directory" },
      recursiveBind: {
        help: "The driver runs with --recursive-bind: check that file systems below the Workload API directory are read-only",
      },
      inspectTimeout: {
        help: "Seconds a check of the Workload API directory may go without progress before it fails as hung",
      },
    },
  ),
  json: { type: "boolean", description: "Print the checks as JSON" },
} satisfies ArgsDef;

/** The doctor's options from its flags; a mistaken flag is a ConfigError. */
function doctorOptions(parsed: Record<string, unknown>, argv: readonly string[]): DoctorOptions {
  const unknown = unknownFlags(parsed, args);
  if (unknown.length > 0) throw new ConfigError(`unknown flag --${unknown[0]}`);
  const kubeletDir = parsed["kubelet-dir"] as string;
  const workloadUser = parseWorkloadUser(parsed["workload-user"] as string);
  if (typeof workloadUser === "string") throw new ConfigError(workloadUser);
  const builtIn = readSetting("kubeletRegistrationDir", kubeletRegistrationDir, parsed);
  const rules = listValues(argv, LISTS).allow;
  const givenSocket = readSetting(
    "csiSocketPath",
    { ...csiSocketPath, default: undefined },
    parsed,
  );
  return {
    workloadApiSocketDir: readSetting("workloadApiSocketDir", workloadApiSocketDir, parsed),
    csiSocketPath: givenSocket ?? csiSocketPath.default,
    queryDriver: givenSocket !== undefined,
    // Checked as one of the doctor's lines, not refused.
    pluginName: readSetting("pluginName", { ...pluginName, parse: String }, parsed),
    kubeletDir,
    registrationDir:
      builtIn ??
      (parsed["registration-dir"] as string | undefined) ??
      join(kubeletDir, "plugins_registry"),
    builtInRegistration: builtIn !== undefined,
    policy: rules === undefined ? undefined : readSetting("allow", allow, { allow: rules }),
    workloadUser,
    selinuxContext: readSetting("selinuxContext", selinuxContext, parsed),
    recursiveBind: readSetting("recursiveBind", recursiveBind, parsed),
    allowSymlinkedSocketDir: readSetting(
      "allowSymlinkedSocketDir",
      allowSymlinkedSocketDir,
      parsed,
    ),
    inspectTimeoutMs: readSetting("inspectTimeout", inspectTimeout, parsed),
  };
}

export const doctor = defineCommand({
  meta: {
    name: "doctor",
    description: "Check this node's set-up for the driver: one line per check",
  },
  args,
  async run({ args: parsed, rawArgs }) {
    const options = settingsOrExit(
      () => doctorOptions(parsed as Record<string, unknown>, rawArgs),
      "doctor",
    );
    const checks = await runChecks(options);
    process.stdout.write(parsed.json ? `${asciiJson(checks, 2)}\n` : `${formatChecks(checks)}\n`);
    exit(checks.every((check) => check.ok) ? 0 : 1);
  },
});
