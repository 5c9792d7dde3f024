// Built-in kubelet registration: a client plays the kubelet's plugin watcher against the
// driver's registration socket.
import { afterAll, expect, setDefaultTimeout, test } from "bun:test";
import { existsSync, lstatSync, mkdirSync, rmSync, watch } from "node:fs";
import { join } from "node:path";
import { Registration } from "../../src/gen/pluginregistration/v1/api_pb.ts";
import { createClient } from "../../src/rpc/client.ts";
import { type DriverProcess, spawnDriver, startDriver, tempDir } from "../helpers/driver.ts";
import { waitFor } from "../helpers/wait.ts";

// Every test here starts a driver process and waits on it.
setDefaultTimeout(120_000);

const root = tempDir("registration");
const registry = join(root, "plugins_registry");
mkdirSync(registry);
const running: DriverProcess[] = [];

afterAll(async () => {
  for (const driver of running) if (driver.proc.exitCode === null) await driver.stop("SIGKILL");
  rmSync(root, { recursive: true, force: true });
}, 60_000);

/** What the kubelet's plugin watcher does: waits for a socket to appear in its directory. */
async function socketAppears(dir: string, name: string): Promise<string> {
  const path = join(dir, name);
  const watcher = watch(dir);
  try {
    await waitFor(`${name} in ${dir}`, () => existsSync(path));
  } finally {
    watcher.close();
  }
  expect(lstatSync(path).isSocket()).toBe(true);
  return path;
}

test("the plugin watcher finds the socket, learns the plugin, and its verdict is logged", async () => {
  const csiSocketPath = join(root, "plugin", "csi.sock");
  const driver = await startDriver({
    workloadApiSocketDir: root,
    csiSocketPath,
    args: [
      "--kubelet-registration-dir",
      registry,
      "--kubelet-registration-path",
      "/var/lib/kubelet/plugins/csi.spiffe.io/csi.sock",
    ],
  });
  running.push(driver);
  const socket = await socketAppears(registry, "csi.spiffe.io-reg.sock");
  const watcher = createClient(Registration, `unix://${socket}`);

  const info = await watcher.getInfo({});
  expect(info.type).toBe("CSIPlugin");
  expect(info.name).toBe("csi.spiffe.io");
  expect(info.endpoint).toBe("/var/lib/kubelet/plugins/csi.spiffe.io/csi.sock");
  expect(info.supportedVersions).toEqual(["1.0.0"]);

  await watcher.notifyRegistrationStatus({ pluginRegistered: true });
  await watcher.notifyRegistrationStatus({
    pluginRegistered: false,
    error: "plugin csi.spiffe.io already registered",
  });
  watcher.close();

  const { code, stderr } = await driver.stop();
  expect(code).toBe(0);
  expect(stderr).toContain("registered with the kubelet");
  expect(stderr).toMatch(/ERROR .*the kubelet refused to register the driver.*already registered/);
  // Gone on shutdown: the kubelet deregisters the plugin.
  expect(existsSync(socket)).toBe(false);
  expect(existsSync(csiSocketPath)).toBe(false);
});

test("the endpoint defaults to -csi-socket-path, and a plugin name of its own names the socket", async () => {
  const csiSocketPath = join(root, "other", "csi.sock");
  const driver = await startDriver({
    workloadApiSocketDir: root,
    csiSocketPath,
    args: ["-plugin-name", "spiffe.example.org", "--kubelet-registration-dir", registry],
  });
  running.push(driver);
  const socket = await socketAppears(registry, "spiffe.example.org-reg.sock");
  const info = await createClient(Registration, `unix://${socket}`).getInfo({});
  expect(info.name).toBe("spiffe.example.org");
  expect(info.endpoint).toBe(csiSocketPath);
  await driver.stop();
});

test("a relative registration directory is a setting error: exit 2", async () => {
  const driver = spawnDriver(
    [
      "-workload-api-socket-dir",
      root,
      "-csi-socket-path",
      join(root, "x", "csi.sock"),
      "--kubelet-registration-dir",
      "plugins_registry",
    ],
    { MY_NODE_NAME: "n" },
  );
  const { code, stderr } = await driver.exited();
  expect(code).toBe(2);
  expect(stderr).toContain("--kubelet-registration-dir must be an absolute path");
});
