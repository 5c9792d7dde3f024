import type { PodPolicy } from "../csi/policy.ts";
import type { LogFormat, LogLevel } from "../ops/log.ts";
import type { SelinuxLabelMode } from "../selinux/context.ts";
import { unknownFlags } from "./argv.ts";
import { argsOf, ConfigError, listValues, readSettings, SETTINGS } from "./settings.ts";

export interface Config {
  workloadApiSocketDir: string;
  /** Follow symbolic links on the Workload API directory's path. */
  allowSymlinkedSocketDir: boolean;
  /** How long the driver runs at least before it restarts itself for a removed directory. */
  selfRestartBackoffMs: number;
  csiSocketPath: string;
  pluginName: string;
  nodeId: string;
  /** Which pods may have the volume (--allow); without rules, every pod. */
  policy: PodPolicy;
  logLevel: LogLevel;
  logFormat: LogFormat;
  /** How long one `mount` or `umount` may run before it is killed. */
  mountTimeoutMs: number;
  /** How long a look into the Workload API directory may go without progress. */
  inspectTimeoutMs: number;
  /** host:port for the HTTP health and metrics endpoint; none when unset. */
  healthAddr?: string;
  /** Connections open at once on each of the driver's sockets. */
  maxConnections: number;
  /** How long a connection with no call stays open. */
  connectionIdleTimeoutMs: number;
  /** Built-in kubelet registration: the plugins_registry directory, and the CSI socket's path as
   * the kubelet sees it. */
  kubeletRegistration?: { dir: string; endpoint: string };
  /** Whether the Workload API directory gets SELinux labels: auto, on or off. */
  selinuxLabel: SelinuxLabelMode;
  /** The SELinux label it gets. */
  selinuxContext: string;
  /** Bind the Workload API directory with every mount below it, propagating later ones. */
  recursiveBind: boolean;
  /** With recursiveBind: bind read-write mounts below the directory too. */
  allowWritableSubmounts: boolean;
}

/** The driver's command-line arguments, for citty. */
export const args = argsOf(SETTINGS);

// CSI size limit for node_id.
const MAX_NODE_ID_BYTES = 256;

/**
 * What the command line says, as configFromArgs reads it: citty's parse of `argv` (normalized,
 * see argv.ts), with every value of a flag that may be repeated.
 */
export function parsedArgs(
  parsed: Record<string, unknown>,
  argv: readonly string[],
): Record<string, unknown> {
  return { ...parsed, ...listValues(argv, SETTINGS) };
}

/** Reads the parsed flags into a Config; a problem is a ConfigError. */
export function configFromArgs(
  parsed: Record<string, unknown>,
  env: Record<string, string | undefined>,
): Config {
  const unknown = unknownFlags(parsed, args);
  if (unknown.length > 0) {
    throw new ConfigError(`unknown flag --${unknown[0]} (see --help)`);
  }
  const positionals = (parsed._ ?? []) as string[];
  if (positionals.length > 0) {
    throw new ConfigError(`unexpected argument ${JSON.stringify(positionals[0])} (see --help)`);
  }
  const settings = readSettings(SETTINGS, parsed);
  const nodeId = settings.nodeId || env[settings.nodeIdEnv] || "";
  if (!nodeId) {
    throw new ConfigError(
      `a node id is required: set --node-id, or the environment variable ${settings.nodeIdEnv} (named by --node-id-env)`,
    );
  }
  if (Buffer.byteLength(nodeId) > MAX_NODE_ID_BYTES) {
    throw new ConfigError(`the node id is longer than ${MAX_NODE_ID_BYTES} bytes`);
  }
  if (settings.allowWritableSubmounts && !settings.recursiveBind) {
    throw new ConfigError("--allow-writable-submounts applies only with --recursive-bind");
  }
  const dir = settings.kubeletRegistrationDir;
  return {
    workloadApiSocketDir: settings.workloadApiSocketDir,
    allowSymlinkedSocketDir: settings.allowSymlinkedSocketDir,
    selfRestartBackoffMs: settings.selfRestartBackoff,
    csiSocketPath: settings.csiSocketPath,
    pluginName: settings.pluginName,
    nodeId,
    policy: settings.allow,
    logLevel: settings.logLevel,
    logFormat: settings.logFormat,
    mountTimeoutMs: settings.mountTimeout,
    inspectTimeoutMs: settings.inspectTimeout,
    healthAddr: settings.healthAddr,
    maxConnections: settings.maxConnections,
    connectionIdleTimeoutMs: settings.connectionIdleTimeout,
    kubeletRegistration: dir
      ? { dir, endpoint: settings.kubeletRegistrationPath ?? settings.csiSocketPath }
      : undefined,
    selinuxLabel: settings.selinuxLabel,
    selinuxContext: settings.selinuxContext,
    recursiveBind: settings.recursiveBind,
    allowWritableSubmounts: settings.allowWritableSubmounts,
  };
}
