import { join } from "node:path";
import { type ArgsDef, defineCommand } from "citty";
import { unknownFlags } from "./argv.ts";
import {
  agentChecks,
  type Check,
  capabilityCheck,
  type DoctorOptions,
  driverChecks,
  kubeletChecks,
  labelChecks,
  pluginNameCheck,
  programChecks,
  registrationDirectoryCheck,
  socketDirectoryCheck,
  socketDirectorySafetyCheck,
  submountChecks,
} from "./doctor-checks.ts";
import { exit } from "./exit.ts";
import { startInspector } from "./inspector.ts";
import { argsOf, ConfigError, readSetting, SETTINGS } from "./settings.ts";

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
    ...(await agentChecks(inspector, socketDir)),
    ...(await labelChecks(inspector, socketDir, options.selinuxContext, !!options.recursiveBind)),
    ...(options.recursiveBind ? await submountChecks(socketDir) : []),
    socketDirectoryCheck(options.csiSocketPath),
    socketDirectorySafetyCheck(options.csiSocketPath),
    ...kubeletChecks(options.kubeletDir),
    registrationDirectoryCheck(options.registrationDir),
    ...programChecks(),
    capabilityCheck(),
    pluginNameCheck(options.pluginName),
    ...(options.queryDriver ? await driverChecks(options) : []),
  ];
}

function formatChecks(checks: Check[]): string {
  return checks
    .map((check) => {
      const line = `${check.ok ? "PASS" : "FAIL"}  ${check.name}: ${check.detail}`;
      return check.fix ? `${line}\n      fix: ${check.fix}` : line;
    })
    .join("\n");
}

// The driver's settings the doctor checks the node against, as the driver reads them.
const {
  workloadApiSocketDir,
  csiSocketPath,
  pluginName,
  selinuxContext,
  recursiveBind,
  inspectTimeout,
} = SETTINGS;

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
    { selinuxContext, recursiveBind, inspectTimeout },
    {
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
function doctorOptions(parsed: Record<string, unknown>): DoctorOptions {
  const unknown = unknownFlags(parsed, args);
  if (unknown.length > 0) throw new ConfigError(`unknown flag --${unknown[0]}`);
  const kubeletDir = parsed["kubelet-dir"] as string;
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
      (parsed["registration-dir"] as string | undefined) ?? join(kubeletDir, "plugins_registry"),
    selinuxContext: readSetting("selinuxContext", selinuxContext, parsed),
    recursiveBind: readSetting("recursiveBind", recursiveBind, parsed),
    inspectTimeoutMs: readSetting("inspectTimeout", inspectTimeout, parsed),
  };
}

export const doctor = defineCommand({
  meta: {
    name: "doctor",
    description: "Check this node's set-up for the driver: one line per check",
  },
  args,
  async run({ args: parsed }) {
    let options: DoctorOptions;
    try {
      options = doctorOptions(parsed as Record<string, unknown>);
    } catch (error) {
      if (error instanceof ConfigError) exit(2, error.message, "doctor");
      throw error;
    }
    const checks = await runChecks(options);
    process.stdout.write(
      parsed.json ? `${JSON.stringify(checks, null, 2)}\n` : `${formatChecks(checks)}\n`,
    );
    exit(checks.every((check) => check.ok) ? 0 : 1);
  },
});
