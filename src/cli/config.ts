import { isAbsolute } from "node:path";
import { parseAddress } from "../ops/address.ts";
import { LOG_FORMATS, LOG_LEVELS, type LogFormat, type LogLevel } from "../ops/log.ts";
import { contextProblem, SELINUX_LABEL_MODES, type SelinuxLabelMode } from "../selinux/context.ts";

/** A setting that is missing or wrong: the program says so in one line and exits with status 2. */
export class ConfigError extends Error {
  override name = "ConfigError";
}

export interface Config {
  workloadApiSocketDir: string;
  csiSocketPath: string;
  pluginName: string;
  nodeId: string;
  logLevel: LogLevel;
  logFormat: LogFormat;
  /** How long one `mount` or `umount` may run before it is killed. */
  mountTimeoutMs: number;
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

/** The flags as the command line gives them, before checking. */
export interface RawSettings {
  workloadApiSocketDir?: string;
  csiSocketPath: string;
  pluginName: string;
  nodeId?: string;
  nodeIdEnv: string;
  logLevel: string;
  logFormat: string;
  mountTimeout: string;
  maxConnections: string;
  connectionIdleTimeout: string;
  healthAddr?: string;
  kubeletRegistrationDir?: string;
  kubeletRegistrationPath?: string;
  selinuxLabel: string;
  selinuxContext: string;
  recursiveBind: boolean;
  allowWritableSubmounts: boolean;
}

// CSI: domain name notation, at most 63 characters, beginning and ending with an alphanumeric
// character, with dashes, dots and alphanumerics between: labels of letters, digits and inner
// dashes, joined by dots.
const PLUGIN_NAME_LABEL = /^[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?$/;
const MAX_PLUGIN_NAME = 63;
// CSI size limit for node_id.
const MAX_NODE_ID_BYTES = 256;

export function validatePluginName(name: string): string | undefined {
  if (
    name.length > MAX_PLUGIN_NAME ||
    !name.split(".").every((label) => PLUGIN_NAME_LABEL.test(label))
  ) {
    return `plugin name ${JSON.stringify(name)} is not valid: it must be a domain name of at most ${MAX_PLUGIN_NAME} characters (letters, digits, '-' inside labels, labels joined by '.')`;
  }
  return undefined;
}

export function resolveConfig(raw: RawSettings, env: Record<string, string | undefined>): Config {
  const socketDir = raw.workloadApiSocketDir;
  if (!socketDir) {
    throw new ConfigError("-workload-api-socket-dir is required");
  }
  if (!isAbsolute(socketDir)) {
    throw new ConfigError(`-workload-api-socket-dir must be an absolute path, got ${socketDir}`);
  }
  if (!raw.csiSocketPath || !isAbsolute(raw.csiSocketPath)) {
    throw new ConfigError(`-csi-socket-path must be an absolute path, got "${raw.csiSocketPath}"`);
  }
  const pluginNameProblem = validatePluginName(raw.pluginName);
  if (pluginNameProblem) {
    throw new ConfigError(pluginNameProblem);
  }
  const nodeId = raw.nodeId || env[raw.nodeIdEnv] || "";
  if (!nodeId) {
    throw new ConfigError(
      `a node id is required: set -node-id, or the environment variable ${raw.nodeIdEnv} (named by -node-id-env)`,
    );
  }
  if (Buffer.byteLength(nodeId) > MAX_NODE_ID_BYTES) {
    throw new ConfigError(`the node id is longer than ${MAX_NODE_ID_BYTES} bytes`);
  }
  if (!(raw.logLevel in LOG_LEVELS)) {
    throw new ConfigError(
      `--log-level must be one of ${Object.keys(LOG_LEVELS).join(", ")}, got "${raw.logLevel}"`,
    );
  }
  if (!LOG_FORMATS.includes(raw.logFormat as LogFormat)) {
    throw new ConfigError(
      `--log-format must be one of ${LOG_FORMATS.join(", ")}, got "${raw.logFormat}"`,
    );
  }
  const mountTimeoutSeconds = Number(raw.mountTimeout);
  if (!Number.isFinite(mountTimeoutSeconds) || mountTimeoutSeconds <= 0) {
    throw new ConfigError(
      `--mount-timeout must be a positive number of seconds, got "${raw.mountTimeout}"`,
    );
  }
  const maxConnections = Number(raw.maxConnections);
  if (!Number.isSafeInteger(maxConnections) || maxConnections < 1) {
    throw new ConfigError(
      `--max-connections must be a positive whole number, got "${raw.maxConnections}"`,
    );
  }
  const idleSeconds = Number(raw.connectionIdleTimeout);
  if (!Number.isFinite(idleSeconds) || idleSeconds <= 0) {
    throw new ConfigError(
      `--connection-idle-timeout must be a positive number of seconds, got "${raw.connectionIdleTimeout}"`,
    );
  }
  if (raw.healthAddr !== undefined && !parseAddress(raw.healthAddr)) {
    throw new ConfigError(`--health-addr must be host:port or :port, got "${raw.healthAddr}"`);
  }
  const registrationDir = raw.kubeletRegistrationDir;
  if (registrationDir !== undefined && !isAbsolute(registrationDir)) {
    throw new ConfigError(
      `--kubelet-registration-dir must be an absolute path, got ${registrationDir}`,
    );
  }
  const endpoint = raw.kubeletRegistrationPath ?? raw.csiSocketPath;
  if (!isAbsolute(endpoint)) {
    throw new ConfigError(`--kubelet-registration-path must be an absolute path, got ${endpoint}`);
  }
  if (!SELINUX_LABEL_MODES.includes(raw.selinuxLabel as SelinuxLabelMode)) {
    throw new ConfigError(
      `--selinux-label must be one of ${SELINUX_LABEL_MODES.join(", ")}, got "${raw.selinuxLabel}"`,
    );
  }
  const selinuxContextProblem = contextProblem(raw.selinuxContext);
  if (selinuxContextProblem) throw new ConfigError(selinuxContextProblem);
  if (raw.allowWritableSubmounts && !raw.recursiveBind) {
    throw new ConfigError("--allow-writable-submounts applies only with --recursive-bind");
  }
  return {
    recursiveBind: raw.recursiveBind,
    allowWritableSubmounts: raw.allowWritableSubmounts,
    selinuxLabel: raw.selinuxLabel as SelinuxLabelMode,
    selinuxContext: raw.selinuxContext,
    kubeletRegistration: registrationDir ? { dir: registrationDir, endpoint } : undefined,
    healthAddr: raw.healthAddr,
    workloadApiSocketDir: socketDir,
    csiSocketPath: raw.csiSocketPath,
    pluginName: raw.pluginName,
    nodeId,
    logLevel: raw.logLevel as LogLevel,
    logFormat: raw.logFormat as LogFormat,
    mountTimeoutMs: mountTimeoutSeconds * 1000,
    maxConnections,
    connectionIdleTimeoutMs: idleSeconds * 1000,
  };
}
