// SELinux as the driver sees it, made up for one process: the kernel stores `security.selinux`
// on tmpfs without a policy loaded, and what tells the driver the node's mode (selinuxfs, the
// process's own context) is faked in a mount namespace of the driver's own.
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { BINARY, DriverProcess, inPrivateMountNamespace, waitServing } from "./driver.ts";

export const CONTAINER_FILE = "system_u:object_r:container_file_t:s0";
/** What the chart's `chcon -t container_file_t` init container leaves: another user, same type. */
export const UNCONFINED_CONTAINER_FILE = "unconfined_u:object_r:container_file_t:s0";
export const HOST_LABEL = "system_u:object_r:var_run_t:s0";
export const ETC_LABEL = "system_u:object_r:etc_t:s0";

/**
 * A command prefix that runs a program in a mount namespace of its own, where /sys/fs is a fresh
 * tmpfs (holding selinux/enforce when `enforce` is given) and /proc/<pid>/attr/current shows
 * `current`: the inputs of SELinux detection, for real. `exec` keeps the pid, so the bind covers
 * the program's own /proc/self/attr/current. `scratch` is a directory for the file behind it.
 */
export function selinuxInputs(scratch: string, enforce: string, current: string): string[] {
  const currentFile = join(scratch, `current-${Bun.hash(enforce + current)}`);
  writeFileSync(currentFile, current);
  const script = [
    "set -e",
    "mount -t tmpfs sysfs-stand-in /sys/fs",
    'if [ -n "$1" ]; then mkdir /sys/fs/selinux; printf %s "$1" > /sys/fs/selinux/enforce; fi',
    'mount --bind "$2" /proc/$$/attr/current',
    "shift 2",
    'exec "$@"',
  ].join("\n");
  return inPrivateMountNamespace(script, "sh", enforce, currentFile);
}

export type SelinuxMode = "enforcing" | "permissive";

/**
 * Starts the driver on a node that runs SELinux in `mode` (a fake selinuxfs), with `args` after
 * the directory and socket flags, and waits until it serves. Its mounts stay in its namespace.
 */
export async function startOnSelinuxNode(
  mode: SelinuxMode,
  scratch: string,
  options: { workloadApiSocketDir: string; csiSocketPath: string; args?: string[] },
): Promise<DriverProcess> {
  const driver = new DriverProcess(
    Bun.spawn(
      [
        ...selinuxInputs(scratch, mode === "enforcing" ? "1" : "0", ""),
        BINARY,
        "-workload-api-socket-dir",
        options.workloadApiSocketDir,
        "-csi-socket-path",
        options.csiSocketPath,
        ...(options.args ?? []),
      ],
      {
        stdin: "ignore",
        stdout: "pipe",
        stderr: "pipe",
        env: { PATH: process.env.PATH ?? "/usr/bin:/bin", MY_NODE_NAME: "node-1" },
      },
    ),
  );
  await waitServing(driver, options.csiSocketPath);
  return driver;
}

/** Switches the running driver's node between enforcing and permissive (setenforce). */
export function setEnforce(driver: DriverProcess, mode: SelinuxMode): void {
  writeFileSync(
    `/proc/${driver.proc.pid}/root/sys/fs/selinux/enforce`,
    mode === "enforcing" ? "1" : "0",
  );
}

/** Runs `doctor` with `args` on a node in `mode`; its checks, from --json. */
export async function doctorOnSelinuxNode(
  mode: SelinuxMode | "off",
  scratch: string,
  args: string[],
): Promise<{
  code: number;
  checks: { name: string; ok: boolean; detail: string; fix?: string }[];
}> {
  const enforce = mode === "off" ? "" : mode === "enforcing" ? "1" : "0";
  const proc = Bun.spawn(
    [...selinuxInputs(scratch, enforce, ""), BINARY, "doctor", ...args, "--json"],
    {
      stdout: "pipe",
      stderr: "pipe",
      env: { PATH: process.env.PATH ?? "/usr/bin:/bin" },
    },
  );
  const [stdout, stderr, code] = await Promise.all([
    new Response(proc.stdout).text(),
    new Response(proc.stderr).text(),
    proc.exited,
  ]);
  try {
    return { code, checks: JSON.parse(stdout) };
  } catch {
    throw new Error(`doctor exited ${code} without JSON: ${stdout}${stderr}`);
  }
}
