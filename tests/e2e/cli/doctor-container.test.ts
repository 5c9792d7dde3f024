// The doctor where docs/operating.md says to run it, in the driver's container: what only the
// registrar sees is skipped, saying why; the agent's socket is checked against the workloads' user; the
// pod policy in force is printed.
import { afterAll, describe, expect, test } from "bun:test";
import { chmodSync, chownSync, existsSync, mkdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import type { Check } from "../../../src/cli/doctor-checks.ts";
import { AGENT_SOCKET } from "../../helpers/agent.ts";
import { BINARY, DriverProcess, waitServing } from "../../helpers/driver.ts";
import { mountTestbed } from "../../helpers/testbed.ts";
import { waitFor } from "../../helpers/wait.ts";

const bed = mountTestbed("doctor");
const { root, socketDir: agentDir, kubeletRoot: kubeletDir } = bed;
// A kubelet directory on a shared mount, as on a node: the doctor's other checks pass.
mkdirSync(kubeletDir);
expect(Bun.spawnSync(["mount", "-t", "tmpfs", "kubelet", kubeletDir]).exitCode).toBe(0);
expect(Bun.spawnSync(["mount", "--make-shared", kubeletDir]).exitCode).toBe(0);
mkdirSync(join(kubeletDir, "pods"));
const socket = join(agentDir, AGENT_SOCKET);
// As SPIRE's agent makes it.
chmodSync(socket, 0o777);
bed.beforeCleanup(() => {
  expect(Bun.spawnSync(["umount", kubeletDir]).exitCode).toBe(0);
});

/** Runs the doctor (after `prefix`, e.g. nsenter); its exit status and checks by name. */
async function doctor(args: string[], prefix: string[] = []) {
  const proc = Bun.spawn(
    [
      ...prefix,
      BINARY,
      "doctor",
      "-workload-api-socket-dir",
      agentDir,
      "--kubelet-dir",
      kubeletDir,
      ...args,
    ],
    { stdout: "pipe", stderr: "pipe", env: { PATH: process.env.PATH ?? "/usr/bin:/bin" } },
  );
  const [stdout, stderr, code] = await Promise.all([
    new Response(proc.stdout).text(),
    new Response(proc.stderr).text(),
    proc.exited,
  ]);
  const json = args.includes("--json");
  const checks = json
    ? Object.fromEntries((JSON.parse(stdout) as Check[]).map((check) => [check.name, check]))
    : {};
  return { code, stdout, stderr, checks: checks as Record<string, Check | undefined> };
}

const USABLE = "Workload API socket is usable by any non-root user";

describe("in the driver's container (the driver is PID 1 of the doctor's PID namespace)", () => {
  const csiSocketPath = join(root, "container", "csi.sock");
  let driver: DriverProcess | undefined;
  let driverPid = 0;

  afterAll(async () => {
    // unshare waits for its child without passing signals on: the driver is stopped itself.
    if (driverPid) process.kill(driverPid, "SIGTERM");
    if (driver) expect((await driver.exited()).code).toBe(0);
  }, 60_000);

  test("the registration directory is skipped, saying why; the rest is checked", async () => {
    // The driver as a container runs it: PID 1 of a PID namespace of its own.
    driver = new DriverProcess(
      Bun.spawn(
        [
          "unshare",
          "--pid",
          "--fork",
          "--mount-proc",
          // Mounts keep their propagation, as the container's Bidirectional pods directory does.
          "--propagation",
          "unchanged",
          // Should the test die, the driver goes with unshare.
          "--kill-child",
          BINARY,
          "-workload-api-socket-dir",
          agentDir,
          "-csi-socket-path",
          csiSocketPath,
          "--allow",
          "spire-server/spire-server",
        ],
        {
          stdin: "ignore",
          stdout: "pipe",
          stderr: "pipe",
          env: { PATH: process.env.PATH ?? "/usr/bin:/bin", MY_NODE_NAME: "node-1" },
        },
      ),
    );
    await waitServing(driver, csiSocketPath);
    const unsharePid = driver.proc.pid;
    // The driver answers, so unshare has forked it.
    driverPid = await waitFor("the driver under unshare", () => {
      const children = readFileSync(`/proc/${unsharePid}/task/${unsharePid}/children`, "utf8");
      return Number(children.trim().split(" ")[0]) || undefined;
    });
    // As `kubectl exec` does: into the container's PID and mount namespaces.
    const inContainer = ["nsenter", "--target", String(driverPid), "--pid", "--mount", "--"];
    const { code, checks } = await doctor(
      ["-csi-socket-path", csiSocketPath, "--json"],
      inContainer,
    );
    const registration = checks["registration directory exists"];
    expect(registration).toEqual({
      name: "registration directory exists",
      ok: true,
      skipped: true,
      detail: `${join(kubeletDir, "plugins_registry")} is not mounted here: this is the driver's container (its PID 1 is the driver), and only node-driver-registrar mounts the registration directory; check it in the registrar's container or its log, or run the doctor on the node`,
    });
    expect(checks["pod policy in force"]?.detail).toBe(
      "the driver admits spire-server/spire-server",
    );
    expect(Object.values(checks).filter((check) => !check?.ok)).toEqual([]);
    expect(code).toBe(0);
    const text = await doctor(["-csi-socket-path", csiSocketPath], inContainer);
    expect(text.stdout).toContain("SKIP  registration directory exists: ");
  });

  test("with built-in registration the driver needs the directory itself: not skipped", async () => {
    const inContainer = ["nsenter", "--target", String(driverPid), "--pid", "--mount", "--"];
    const missing = join(kubeletDir, "plugins_registry");
    const { code, checks } = await doctor(
      ["--kubelet-registration-dir", missing, "--json"],
      inContainer,
    );
    expect(checks["registration directory exists"]).toMatchObject({
      ok: false,
      detail: `${missing} does not exist`,
    });
    expect(code).toBe(1);
  });

  test("on the node, a missing registration directory fails", async () => {
    const { checks } = await doctor(["--json"]);
    expect(checks["registration directory exists"]?.ok).toBe(false);
    expect(checks["registration directory exists"]?.skipped).toBeUndefined();
  });
});

describe("the agent's socket and the workloads' user", () => {
  test("SPIRE's modes (socket 0777, directory 0755) let any non-root user connect", async () => {
    chmodSync(socket, 0o777);
    chmodSync(agentDir, 0o755);
    const { checks } = await doctor(["--json"]);
    expect(checks[USABLE]).toMatchObject({ ok: true });
    expect(checks[USABLE]?.detail).toContain("owner uid 0, group gid 0, mode 0777");
  });

  test("a socket the agent's user owns with mode 0600 is reported, though root connects", async () => {
    chownSync(socket, 1001, 1001);
    chmodSync(socket, 0o600);
    const { code, checks } = await doctor(["--json"]);
    expect(checks["Workload API socket accepts a connection"]?.ok).toBe(true);
    expect(checks[USABLE]).toMatchObject({
      ok: false,
      detail: `${socket} (owner uid 1001, group gid 1001, mode 0600) cannot be connected to by any non-root user, which takes write permission on it: root can connect, pods running as any non-root user cannot`,
    });
    expect(checks[USABLE]?.fix).toContain("--workload-user UID[:GID]");
    expect(code).toBe(1);
  });

  test("--workload-user: the owner, a member of the group, or anyone else, as the mode says", async () => {
    chownSync(socket, 1001, 2001);
    chmodSync(socket, 0o620);
    const usable = async (user: string, name: string) =>
      (await doctor(["--workload-user", user, "--json"])).checks[
        `Workload API socket is usable by ${name}`
      ]?.ok;
    expect(await usable("1001", "uid 1001")).toBe(true);
    expect(await usable("1000:2001", "uid 1000 (gid 2001)")).toBe(true);
    expect(await usable("1000", "uid 1000")).toBe(false);
    expect(await usable("1000:3000", "uid 1000 (gid 3000)")).toBe(false);
  });

  test("a directory the workloads' user cannot enter is reported", async () => {
    chmodSync(socket, 0o777);
    chmodSync(agentDir, 0o700);
    const { checks } = await doctor(["--json"]);
    expect(checks[USABLE]?.ok).toBe(false);
    expect(checks[USABLE]?.detail).toContain(
      `${agentDir} (owner uid 0, group gid 0, mode 0700) cannot be entered by any non-root user`,
    );
    chmodSync(agentDir, 0o755);
  });

  test("a --workload-user that is no user is exit 2", async () => {
    const { code, stderr } = await doctor(["--workload-user", "nobody"]);
    expect(code).toBe(2);
    expect(stderr).toBe(
      'spiffe-csi-driver doctor: --workload-user must be "any" or UID[:GID] (numbers, as in a pod\'s runAsUser and runAsGroup), got "nobody"\n',
    );
  });
});

describe("the pod policy in force", () => {
  test("without the driver: the --allow rules given, or skipped", async () => {
    const none = await doctor(["--json"]);
    expect(none.checks["pod policy in force"]).toMatchObject({ ok: true, skipped: true });
    const given = await doctor(["--allow", "team-a", "-allow=b/c", "--json"]);
    expect(given.checks["pod policy in force"]).toEqual({
      name: "pod policy in force",
      ok: true,
      detail: "team-a/*, b/c, as --allow says here (--csi-socket-path asks the driver)",
    });
  });

  test("with the driver: its own rules, and a mismatch with --allow fails", async () => {
    const csiSocketPath = join(root, "policy", "csi.sock");
    await bed.start(["--allow", "team-a,team-b/web"], { csiSocketPath });
    const same = await doctor([
      "-csi-socket-path",
      csiSocketPath,
      "--allow",
      "team-b/web",
      "--allow",
      "team-a/*",
      "--json",
    ]);
    expect(same.checks["pod policy in force"]).toMatchObject({
      ok: true,
      detail: "the driver admits team-a/*, team-b/web",
    });
    const other = await doctor(["-csi-socket-path", csiSocketPath, "--allow", "team-a", "--json"]);
    expect(other.checks["pod policy in force"]).toMatchObject({
      ok: false,
      detail: "the driver admits team-a/*, team-b/web, not team-a/* as --allow says here",
    });
    expect(other.code).toBe(1);
    const bad = await doctor(["--allow", "Team"]);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toContain('--allow "Team": "Team" is not a namespace name');
    expect(existsSync(csiSocketPath)).toBe(true);
  });
});
