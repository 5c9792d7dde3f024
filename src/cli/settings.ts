import { isAbsolute } from "node:path";
import { parseArgs } from "node:util";
import type { ArgsDef } from "citty";
import { AllowRuleError, PodPolicy } from "../csi/policy.ts";
import { parseAddress } from "../ops/address.ts";
import { LOG_FORMATS, LOG_LEVELS, type LogFormat, type LogLevel } from "../ops/log.ts";
import {
  contextProblem,
  DEFAULT_SELINUX_CONTEXT,
  SELINUX_LABEL_MODES,
  type SelinuxLabelMode,
} from "../selinux/context.ts";

/**
 * Every flag of the driver, declared once. This table makes citty's arguments (and so `--help`),
 * reads and checks each value for the Config, gives `probe` and `doctor` the flags they share
 * with the driver, and is what docs/configuration.md's flags table is generated from.
 */

/** A setting that is missing or wrong: the program says so in one line and exits with status 2. */
export class ConfigError extends Error {
  override name = "ConfigError";
}

interface SettingBase {
  /** The Go reference driver has this flag: its manifests spell it `-name`, with one dash. */
  reference?: boolean;
  help: string;
  /** What it means to leave the flag out, for docs/configuration.md (when it has no default value). */
  unset?: string;
  valueHint?: string;
}

/** A flag that takes a value (`--name value`, `--name=value`). */
interface TextSetting<T> extends SettingBase {
  kind: "text";
  /** The value taken when the flag is not given; none: the setting is unset. */
  default?: string;
  required?: boolean;
  /** Reads and checks a value; a problem is a ConfigError naming the flag. */
  parse: (value: string, flag: string) => T;
}

/** A switch: `--name`, or `--name=true|false` (never a separate value, as in Go). */
interface SwitchSetting extends SettingBase {
  kind: "switch";
}

/** A flag that may be given more than once (`--name a --name b`); unset, it has no value. */
export interface ListSetting<T> extends SettingBase {
  kind: "list";
  /** Reads and checks every value given, in order; a problem is a ConfigError. */
  parse: (values: string[], flag: string) => T;
}

export type Setting = TextSetting<unknown> | SwitchSetting | ListSetting<unknown>;

function text<const S extends Omit<TextSetting<unknown>, "kind">>(
  setting: S,
): S & { kind: "text" } {
  return { kind: "text", ...setting };
}

function list<const S extends Omit<ListSetting<unknown>, "kind">>(
  setting: S,
): S & { kind: "list" } {
  return { kind: "list", ...setting };
}

function toggle<const S extends Omit<SwitchSetting, "kind">>(setting: S): S & { kind: "switch" } {
  return { kind: "switch", ...setting };
}

const got = (value: string) => JSON.stringify(value);

const anyText = (value: string) => value;

function absolutePath(value: string, flag: string): string {
  if (!isAbsolute(value))
    throw new ConfigError(`--${flag} must be an absolute path, got ${got(value)}`);
  return value;
}

/** A number of seconds, as milliseconds. */
export function positiveSeconds(value: string, flag: string): number {
  const seconds = Number(value);
  if (!Number.isFinite(seconds) || seconds <= 0) {
    throw new ConfigError(`--${flag} must be a positive number of seconds, got ${got(value)}`);
  }
  return seconds * 1000;
}

function positiveWholeNumber(value: string, flag: string): number {
  const number = Number(value);
  if (!Number.isSafeInteger(number) || number < 1) {
    throw new ConfigError(`--${flag} must be a positive whole number, got ${got(value)}`);
  }
  return number;
}

function oneOf<T extends string>(choices: readonly T[]): (value: string, flag: string) => T {
  return (value, flag) => {
    if (!choices.includes(value as T)) {
      throw new ConfigError(`--${flag} must be one of ${choices.join(", ")}, got ${got(value)}`);
    }
    return value as T;
  };
}

// CSI: domain name notation, at most 63 characters, beginning and ending with an alphanumeric
// character, with dashes, dots and alphanumerics between: labels of letters, digits and inner
// dashes, joined by dots.
const PLUGIN_NAME_LABEL = /^[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?$/;
const MAX_PLUGIN_NAME = 63;

/** Why `name` cannot be a CSI plugin name, or undefined when it can. */
export function validatePluginName(name: string): string | undefined {
  if (
    name.length > MAX_PLUGIN_NAME ||
    !name.split(".").every((label) => PLUGIN_NAME_LABEL.test(label))
  ) {
    return `plugin name ${got(name)} is not valid: it must be a domain name of at most ${MAX_PLUGIN_NAME} characters (letters, digits, '-' inside labels, labels joined by '.')`;
  }
  return undefined;
}

function pluginName(value: string): string {
  const problem = validatePluginName(value);
  if (problem) throw new ConfigError(problem);
  return value;
}

function address(value: string, flag: string): string {
  if (!parseAddress(value)) {
    throw new ConfigError(`--${flag} must be host:port or :port, got ${got(value)}`);
  }
  return value;
}

function podPolicy(values: string[]): PodPolicy {
  try {
    return PodPolicy.parse(values);
  } catch (error) {
    if (error instanceof AllowRuleError) throw new ConfigError(error.message);
    throw error;
  }
}

function selinuxContext(value: string): string {
  const problem = contextProblem(value);
  if (problem) throw new ConfigError(problem);
  return value;
}

/** The driver's flags, in the order `--help` lists them; the flag is the key in kebab-case. */
export const SETTINGS = {
  workloadApiSocketDir: text({
    reference: true,
    required: true,
    unset: "(required)",
    help: "Directory holding the SPIFFE Workload API socket, bind-mounted into pods (required)",
    valueHint: "dir",
    parse: absolutePath,
  }),
  allowSymlinkedSocketDir: toggle({
    unset: "off",
    help: "Follow symbolic links on the path of --workload-api-socket-dir (refused otherwise); every directory on the way must still be root's and writable by root alone",
  }),
  selfRestartBackoff: text({
    default: "30",
    help: "Seconds the driver runs at least before it restarts itself because the Workload API directory it sees was removed on the node (so at most one such restart per period); it exits with status 75",
    parse: positiveSeconds,
  }),
  csiSocketPath: text({
    reference: true,
    default: "/spiffe-csi/csi.sock",
    help: "Unix socket the CSI services are served on",
    valueHint: "path",
    parse: absolutePath,
  }),
  pluginName: text({
    reference: true,
    default: "csi.spiffe.io",
    help: "CSI plugin name (domain notation, at most 63 characters)",
    parse: pluginName,
  }),
  nodeId: text({
    reference: true,
    unset: "",
    help: "Kubernetes node name; when unset it is read from the variable named by --node-id-env",
    parse: anyText,
  }),
  nodeIdEnv: text({
    reference: true,
    default: "MY_NODE_NAME",
    help: "Environment variable holding the node name",
    parse: anyText,
  }),
  allow: list({
    unset: "every pod",
    help: "Admit only pods of this namespace (NAMESPACE), or of this service account of it (NAMESPACE/SERVICEACCOUNT); * for any; repeat the flag, or join rules with commas. Unset: every pod",
    valueHint: "rule",
    parse: podPolicy,
  }),
  logLevel: text({
    default: "info",
    help: "error, warn, info, debug (one line per RPC) or trace",
    parse: oneOf(Object.keys(LOG_LEVELS) as LogLevel[]),
  }),
  logFormat: text({
    default: "text",
    help: "text or json",
    parse: oneOf<LogFormat>(LOG_FORMATS),
  }),
  mountTimeout: text({
    default: "30",
    help: "Seconds one mount or umount may run before it is killed",
    parse: positiveSeconds,
  }),
  inspectTimeout: text({
    default: "5",
    help: "Seconds a look into the Workload API directory (its listing, labels, socket) may go without progress before the call that needs it answers UNAVAILABLE (a file system there that hangs)",
    parse: positiveSeconds,
  }),
  maxConnections: text({
    default: "256",
    help: "Connections open at once on each of the driver's sockets; beyond them, one that has sent nothing gives way to the new one, else the new one is closed",
    parse: positiveWholeNumber,
  }),
  connectionIdleTimeout: text({
    default: "60",
    help: "Seconds a connection with no call stays open",
    parse: positiveSeconds,
  }),
  kubeletRegistrationDir: text({
    unset: "(off)",
    help: "Register with the kubelet without node-driver-registrar: its plugins_registry directory (e.g. /var/lib/kubelet/plugins_registry); off when unset",
    valueHint: "dir",
    parse: absolutePath,
  }),
  kubeletRegistrationPath: text({
    unset: "`--csi-socket-path`",
    help: "The CSI socket's path as the kubelet sees it, for --kubelet-registration-dir (default: --csi-socket-path)",
    valueHint: "path",
    parse: absolutePath,
  }),
  healthAddr: text({
    unset: "(off)",
    help: "host:port (or :port) for HTTP /healthz, /readyz and /metrics; off when unset",
    valueHint: "addr",
    parse: address,
  }),
  selinuxLabel: text({
    default: "auto",
    help: "Label the Workload API directory and its entries for containers (SELinux): auto (when the node runs SELinux), on or off",
    parse: oneOf<SelinuxLabelMode>(SELINUX_LABEL_MODES),
  }),
  selinuxContext: text({
    default: DEFAULT_SELINUX_CONTEXT,
    help: "The SELinux label they get (user:role:type:level)",
    parse: selinuxContext,
  }),
  recursiveBind: toggle({
    unset: "off",
    help: "Bind the Workload API directory with the file systems mounted below it (e.g. SPIFFEFS), and let ones mounted later reach the pods (--recursive-bind or --recursive-bind=true|false)",
  }),
  allowWritableSubmounts: toggle({
    unset: "off",
    help: "With --recursive-bind: also publish when a file system below the directory is read-write (pods get it writable)",
  }),
} satisfies Record<string, Setting>;

/** The value a setting yields: its parse's result, a switch's boolean, undefined when unset. */
type SettingValue<S> = S extends { kind: "text"; parse: (...args: never[]) => infer T }
  ? S extends { default: string } | { required: true }
    ? T
    : T | undefined
  : S extends { kind: "list"; parse: (...args: never[]) => infer T }
    ? T
    : boolean;

/** The flag of a setting: `workloadApiSocketDir` is `--workload-api-socket-dir`. */
export function flagOf(name: string): string {
  return name.replace(/[A-Z]/g, (letter) => `-${letter.toLowerCase()}`);
}

/**
 * citty's definition of the given settings; `overrides` changes what a command says about one
 * (or drops its default, for a command that must know whether the flag was given).
 */
export function argsOf(
  settings: Record<string, Setting>,
  overrides: Record<string, { help?: string; default?: undefined }> = {},
): ArgsDef {
  const args: ArgsDef = {};
  for (const [name, setting] of Object.entries(settings)) {
    const override = overrides[name];
    const description = override?.help ?? setting.help;
    const valueHint = setting.valueHint;
    if (setting.kind === "switch") {
      args[flagOf(name)] = { type: "boolean", description };
      continue;
    }
    if (setting.kind === "list") {
      args[flagOf(name)] = {
        type: "string",
        description,
        ...(valueHint !== undefined && { valueHint }),
      };
      continue;
    }
    const fallback = override && "default" in override ? undefined : setting.default;
    args[flagOf(name)] = {
      type: "string",
      description,
      ...(fallback !== undefined && { default: fallback }),
      ...(valueHint !== undefined && { valueHint }),
    };
  }
  return args;
}

/**
 * Reads one setting from what citty parsed: the flag's value checked by its parse, its default
 * when it is not given. A flag given with no value (`-node-id` at the end, `--no-node-id`) is a
 * mistake, as Go's flag package says; silently falling back to a default would hide it.
 */
export function readSetting<S extends Setting>(
  name: string,
  setting: S,
  parsed: Record<string, unknown>,
): SettingValue<S> {
  const flag = flagOf(name);
  const value = parsed[flag];
  if (setting.kind === "list") {
    const values = value === undefined ? [] : Array.isArray(value) ? value : [value];
    for (const each of values) {
      if (typeof each !== "string" || each === "") throw new ConfigError(`--${flag} needs a value`);
    }
    return setting.parse(values, flag) as SettingValue<S>;
  }
  if (setting.kind === "switch") {
    if (value === undefined) return false as SettingValue<S>;
    if (typeof value !== "boolean") throw new ConfigError(`--${flag} takes no value`);
    return value as SettingValue<S>;
  }
  if (value === undefined) {
    if (setting.required) throw new ConfigError(`--${flag} is required`);
    return (
      setting.default === undefined ? undefined : setting.parse(setting.default, flag)
    ) as SettingValue<S>;
  }
  if (typeof value !== "string" || value === "") {
    throw new ConfigError(`--${flag} needs a value`);
  }
  return setting.parse(value, flag) as SettingValue<S>;
}

/** Every setting of `settings`, read and checked in the table's order. */
export function readSettings<T extends Record<string, Setting>>(
  settings: T,
  parsed: Record<string, unknown>,
): { [K in keyof T]: SettingValue<T[K]> } {
  const values: Record<string, unknown> = {};
  for (const [name, setting] of Object.entries(settings)) {
    values[name] = readSetting(name, setting, parsed);
  }
  return values as { [K in keyof T]: SettingValue<T[K]> };
}

/**
 * Every value of each list setting given on the command line (`--allow a --allow=b`), which
 * citty folds into the last one. The words are read as citty reads them (node:util's parser,
 * with the same flags taking values), so a list flag's value is the word citty would take.
 */
export function listValues(
  argv: readonly string[],
  settings: Record<string, Setting>,
): Record<string, string[] | boolean> {
  const options: Record<string, { type: "string" | "boolean"; multiple?: boolean }> = {};
  for (const [name, setting] of Object.entries(settings)) {
    const option = {
      type: setting.kind === "switch" ? ("boolean" as const) : ("string" as const),
      ...(setting.kind === "list" && { multiple: true }),
    };
    options[flagOf(name)] = option;
    options[name] = option;
  }
  const end = argv.indexOf("--");
  // citty takes `--no-name` out before parsing, and so does this.
  const words = (end === -1 ? argv : argv.slice(0, end)).filter((arg) => !arg.startsWith("--no-"));
  const { values } = parseArgs({ args: words, options, strict: false, allowPositionals: true });
  const lists: Record<string, string[] | boolean> = {};
  for (const [name, setting] of Object.entries(settings)) {
    if (setting.kind !== "list") continue;
    const given = [values[flagOf(name)], values[name]]
      .flat()
      .filter((value) => value !== undefined);
    // A flag with no value word (at the end) reads as `true`: readSetting says it needs one.
    if (given.length > 0) lists[flagOf(name)] = given as string[];
    if (argv.includes(`--no-${flagOf(name)}`)) lists[flagOf(name)] = false;
  }
  return lists;
}
