// `spiffe-csi-driver doctor` on real files, sockets and mounts: a set-up that passes every check,
// and each thing that can be wrong with one.
import { describe, expect, setDefaultTimeout, test } from "bun:test";
import { chmodSync, mkdirSync } from "node:fs";
import { join } from "node:path";
import type { Check } from "../../../src/cli/doctor-checks.ts";
import { AGENT_SOCKET } from "../../helpers/agent.ts";
import { assertPrivateMountNamespace, runBinary } from "../../helpers/driver.ts";
import { testbed } from "../../helpers/testbed.ts";

assertPrivateMountNamespace();
// Every test here runs the binary and waits on it.
setDefaultTimeout(120_000);

const bed = testbed("doctor");
const { root } = bed;
const mounted: string[] = [];
bed.beforeCleanup(() => {
  for (const path of mounted.reverse()) Bun.spawnSync(["umount", path]);
});

function mount(argv: string[], target: string): void {
  mkdirSync(target, { recursive: true });
  expect(Bun.spawnSync(["mount", ...argv, target]).exitCode).toBe(0);
  mounted.push(target);
}

describe("doctor", () => {
  // A set-up that passes every check: agent socket, writable CSI directory, kubelet directory on
  // a shared mount, registration directory, a running driver.
  const good = join(root, "good");
  const agentDir = bed.socketDir;
  const kubeletDir = join(good, "kubelet");
  mount(["-t", "tmpfs", "kubelet"], kubeletDir);
  expect(Bun.spawnSync(["mount", "--make-shared", kubeletDir]).exitCode).toBe(0);
  mkdirSync(join(kubeletDir, "pods"));
  mkdirSync(join(kubeletDir, "plugins_registry"));
  const csiSocketPath = join(good, "plugin", "csi.sock");
  const baseArgs = ["doctor", "-workload-api-socket-dir", agentDir, "--kubelet-dir", kubeletDir];

  async function doctor(
    args: string[] = [],
    env: Record<string, string> = {},
    prefix: string[] = [],
  ) {
    const result = await runBinary([...baseArgs, ...args, "--json"], env, prefix);
    return { code: result.code, checks: JSON.parse(result.stdout) as Check[] };
  }
  const status = (checks: Check[], name: string) => checks.find((check) => check.name === name)?.ok;

  test("every check passes on a good set-up, and it exits 0", async () => {
    await bed.start([], { csiSocketPath });
    // As SPIRE's agent makes it: any user may connect.
    chmodSync(join(agentDir, AGENT_SOCKET), 0o777);
    const { code, checks } = await doctor(["-csi-socket-path", csiSocketPath]);
    expect(checks.filter((check) => !check.ok)).toEqual([]);
    expect(checks.map((check) => check.name)).toEqual([
      "Workload API socket directory exists",
      "Workload API socket directory holds a socket",
      "Workload API socket accepts a connection",
      "Workload API socket is usable by any non-root user",
      "Workload API socket directory's path is safe",
      "Workload API directory is labelled for containers (SELinux)",
      "Workload API directory holds only what the driver labels (SELinux)",
      "CSI socket directory is writable",
      "CSI socket directory is safe",
      "kubelet pods directory exists",
      "kubelet pods directory is a shared mount",
      "registration directory exists",
      "mount is on PATH",
      "umount is on PATH",
      "process has CAP_SYS_ADMIN",
      "plugin name is valid",
      "driver answers GetPluginInfo",
      "pod policy in force",
      "driver answers Probe",
    ]);
    expect(code).toBe(0);
    const text = await runBinary([...baseArgs, "-csi-socket-path", csiSocketPath]);
    expect(text.stdout).toContain("PASS  kubelet pods directory is a shared mount");
  });

  test("the agent's directory missing, empty, or with a stale socket fails, saying what to fix", async () => {
    const missing = await doctor(["-workload-api-socket-dir", join(root, "no-such-dir")]);
    expect(status(missing.checks, "Workload API socket directory exists")).toBe(false);
    expect(missing.code).toBe(1);
    const emptyDir = join(root, "empty-agent");
    mkdirSync(emptyDir);
    const empty = await doctor(["-workload-api-socket-dir", emptyDir]);
    expect(status(empty.checks, "Workload API socket directory holds a socket")).toBe(false);
    Bun.spawnSync([
      "python3",
      "-c",
      `import socket; socket.socket(socket.AF_UNIX).bind(${JSON.stringify(join(emptyDir, "stale.sock"))})`,
    ]);
    const stale = await doctor(["-workload-api-socket-dir", emptyDir]);
    expect(status(stale.checks, "Workload API socket accepts a connection")).toBe(false);
    expect(stale.checks.find((check) => !check.ok)?.fix).toContain("restart the SPIFFE agent");
  });

  test("names read from the node are printed escaped: a socket's escape codes cannot turn a FAIL into a PASS", async () => {
    const hostile = join(root, "hostile-agent");
    mkdirSync(hostile);
    // Up a line, erase it, back to its start, a PASS, then a right-to-left override.
    const name = "\x1b[1A\x1b[2K\rPASS  ok\u202e.sock";
    Bun.spawnSync([
      "python3",
      "-c",
      `import os, socket; os.chdir(${JSON.stringify(hostile)}); socket.socket(socket.AF_UNIX).bind(${JSON.stringify(name)})`,
    ]);
    const printable = /^[\x20-\x7e\n]*$/;
    const text = await runBinary([...baseArgs, "-workload-api-socket-dir", hostile]);
    expect(text.stdout).toMatch(printable);
    const line = text.stdout
      .split("\n")
      .find((each) => each.startsWith("FAIL  Workload API socket accepts a connection: "));
    expect(line).toContain(`${hostile}/\\x1b[1A\\x1b[2K\\x0dPASS  ok\\u{202e}.sock`);
    // JSON: nothing outside printable ASCII either, and a JSON reader gets the name back.
    const json = await runBinary([...baseArgs, "-workload-api-socket-dir", hostile, "--json"]);
    expect(json.stdout).toMatch(printable);
    const checks = JSON.parse(json.stdout) as Check[];
    const accepts = checks.find(
      (check) => check.name === "Workload API socket accepts a connection",
    );
    expect(accepts?.detail).toContain(join(hostile, name));
  });

  test("a read-only CSI socket directory fails", async () => {
    const readOnly = join(root, "read-only");
    mount(["-t", "tmpfs", "-o", "ro", "read-only"], readOnly);
    const { checks } = await doctor(["-csi-socket-path", join(readOnly, "csi.sock")]);
    expect(status(checks, "CSI socket directory is writable")).toBe(false);
  });

  test("a kubelet directory on a private mount fails; a missing one fails", async () => {
    const privateKubelet = join(root, "private-kubelet");
    mount(["-t", "tmpfs", "private-kubelet"], privateKubelet);
    mkdirSync(join(privateKubelet, "pods"));
    const { checks } = await doctor(["--kubelet-dir", privateKubelet]);
    expect(status(checks, "kubelet pods directory exists")).toBe(true);
    expect(status(checks, "kubelet pods directory is a shared mount")).toBe(false);
    expect(
      checks.find((check) => check.name === "kubelet pods directory is a shared mount")?.fix,
    ).toContain("Bidirectional");
    expect(status(checks, "registration directory exists")).toBe(false);
    const missing = await doctor(["--kubelet-dir", join(root, "no-kubelet")]);
    expect(status(missing.checks, "kubelet pods directory exists")).toBe(false);
  });

  test("mount and umount missing from PATH fail", async () => {
    const empty = join(root, "empty-path");
    mkdirSync(empty);
    const { checks } = await doctor([], { PATH: empty });
    expect(status(checks, "mount is on PATH")).toBe(false);
    expect(status(checks, "umount is on PATH")).toBe(false);
  });

  test("without CAP_SYS_ADMIN it fails", async () => {
    const { checks } = await doctor([], {}, [
      "setpriv",
      "--bounding-set",
      "-sys_admin",
      "--inh-caps",
      "-sys_admin",
    ]);
    expect(status(checks, "process has CAP_SYS_ADMIN")).toBe(false);
  });

  test("a bad plugin name fails, and so does a driver of another name", async () => {
    const { checks } = await doctor([
      "-plugin-name",
      "bad_name",
      "-csi-socket-path",
      csiSocketPath,
    ]);
    expect(status(checks, "plugin name is valid")).toBe(false);
    expect(status(checks, "driver answers GetPluginInfo")).toBe(false);
  });

  test("an unreadable agent directory says so, and a mistaken flag is exit 2", async () => {
    const locked = join(root, "locked-agent");
    mkdirSync(locked, { mode: 0o000 });
    const { checks } = await doctor(["-workload-api-socket-dir", locked], {}, [
      "setpriv",
      "--bounding-set",
      "-dac_override,-dac_read_search",
      "--inh-caps",
      "-dac_override,-dac_read_search",
    ]);
    const exists = checks.find((check) => check.name === "Workload API socket directory exists");
    expect(exists?.ok).toBe(false);
    expect(exists?.detail).toContain("cannot read");
    const typo = await runBinary([...baseArgs, "--kubelet-root", "/x"]);
    expect(typo.code).toBe(2);
    expect(typo.stderr).toContain("unknown flag --kubelet-root");
  });

  test("a CSI socket nobody serves fails", async () => {
    const { checks } = await doctor(["-csi-socket-path", join(root, "nobody-here.sock")]);
    expect(status(checks, "driver answers on the CSI socket")).toBe(false);
  });
});
