// The real binary, started as a process, answering a real grpc-js client on its unix socket.
import { afterAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { existsSync, lstatSync, mkdirSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { status } from "@grpc/grpc-js";
import pkg from "../../package.json" with { type: "json" };
import {
  clients,
  type DriverProcess,
  spawnDriver,
  startDriver,
  tempDir,
  waitServing,
} from "../helpers/driver.ts";
import { sendRawRequest } from "../helpers/rpc.ts";

// Every test here starts driver processes and waits on them.
setDefaultTimeout(120_000);

const root = tempDir("identity");
const socketDir = join(root, "agent");
mkdirSync(socketDir);
const running: DriverProcess[] = [];

afterAll(async () => {
  for (const driver of running) if (driver.proc.exitCode === null) await driver.stop("SIGKILL");
  rmSync(root, { recursive: true, force: true });
}, 60_000);

async function started(name: string, args: string[] = []) {
  const csiSocketPath = join(root, name, "csi.sock");
  const driver = await startDriver({ workloadApiSocketDir: socketDir, csiSocketPath, args });
  running.push(driver);
  return { driver, csiSocketPath, ...clients(csiSocketPath) };
}

describe("Identity and Controller over the socket", async () => {
  const { identity, controller, csiSocketPath } = await started("identity");

  test("GetPluginInfo answers the plugin name and the package version", async () => {
    const info = await identity.getPluginInfo({});
    expect(info.name).toBe("csi.spiffe.io");
    expect(info.vendorVersion).toBe(pkg.version);
  });

  test("GetPluginCapabilities answers none: a node-only plugin", async () => {
    expect((await identity.getPluginCapabilities({})).capabilities).toEqual([]);
  });

  test("Probe answers ready", async () => {
    expect((await identity.probe({})).ready).toBe(true);
  });

  test("ControllerGetCapabilities answers an empty list", async () => {
    expect((await controller.controllerGetCapabilities({})).capabilities).toEqual([]);
  });

  test("methods the driver does not serve answer UNIMPLEMENTED", async () => {
    const { code } = await sendRawRequest(
      `unix://${csiSocketPath}`,
      "/csi.v1.Controller/CreateVolume",
      Buffer.alloc(0),
    );
    expect(code).toBe(status.UNIMPLEMENTED);
  });

  test("the socket is mode 0600", () => {
    const stat = lstatSync(csiSocketPath);
    expect(stat.isSocket()).toBe(true);
    expect(stat.mode & 0o777).toBe(0o600);
  });
});

describe("command line", () => {
  test("takes the reference DaemonSet's single-dash flags, and --flag=value", async () => {
    const { identity } = await started("flags", [
      "-plugin-name=spiffe.example.org",
      "--node-id",
      "node-x",
    ]);
    expect((await identity.getPluginInfo({})).name).toBe("spiffe.example.org");
  });

  test("--version prints the version and exits 0", async () => {
    const driver = spawnDriver(["--version"]);
    const stdout = await new Response(driver.proc.stdout).text();
    expect((await driver.exited()).code).toBe(0);
    expect(stdout.trim()).toBe(pkg.version);
  });

  test("--help lists every flag", async () => {
    const driver = spawnDriver(["--help"]);
    const stdout = await new Response(driver.proc.stdout).text();
    expect((await driver.exited()).code).toBe(0);
    for (const flag of [
      "workload-api-socket-dir",
      "csi-socket-path",
      "plugin-name",
      "node-id-env",
      "log-format",
    ]) {
      expect(stdout).toContain(`--${flag}`);
    }
  });

  const badStarts: [string, string[], Record<string, string>, string][] = [
    [
      "no socket dir",
      ["-csi-socket-path", "/tmp/x.sock"],
      { MY_NODE_NAME: "n" },
      "--workload-api-socket-dir is required",
    ],
    ["no node id", ["-workload-api-socket-dir", "/run/spire"], {}, "a node id is required"],
    [
      "a bad plugin name",
      ["-workload-api-socket-dir", "/run/spire", "-plugin-name", "bad_name"],
      { MY_NODE_NAME: "n" },
      'plugin name "bad_name" is not valid',
    ],
    [
      "an unknown flag",
      ["-workload-api-socket-dir", "/run/spire", "-socket-dir", "/x"],
      { MY_NODE_NAME: "n" },
      "unknown flag --socket-dir",
    ],
    [
      "a bad log format",
      ["-workload-api-socket-dir", "/run/spire", "--log-format", "xml"],
      { MY_NODE_NAME: "n" },
      "--log-format must be one of",
    ],
  ];
  for (const [name, argv, env, message] of badStarts) {
    test(`${name}: one line on stderr, exit 2, no socket`, async () => {
      const csiSocketPath = join(root, `bad-${name.replaceAll(" ", "-")}`, "csi.sock");
      const driver = spawnDriver([...argv, "--csi-socket-path", csiSocketPath], env);
      const { code, stderr } = await driver.exited();
      expect(code).toBe(2);
      const lines = stderr.trim().split("\n");
      expect(lines).toHaveLength(1);
      expect(lines[0]).toStartWith(`spiffe-csi-driver: ${message}`);
      expect(existsSync(csiSocketPath)).toBe(false);
    });
  }
});

describe("socket lifecycle", () => {
  test("after SIGKILL, a restart removes the stale socket and serves", async () => {
    const { driver, csiSocketPath } = await started("stale");
    await driver.stop("SIGKILL");
    // The killed process could not clean up: its socket is still there, and nobody answers.
    expect(lstatSync(csiSocketPath).isSocket()).toBe(true);
    const again = spawnDriver(
      ["-workload-api-socket-dir", socketDir, "-csi-socket-path", csiSocketPath],
      { MY_NODE_NAME: "n" },
    );
    running.push(again);
    await waitServing(again, csiSocketPath);
    expect(again.stderr).toContain("removed a stale socket");
  });

  test("refuses to start beside a live server, and leaves its socket alone", async () => {
    const { csiSocketPath } = await started("live");
    const second = spawnDriver(
      ["-workload-api-socket-dir", socketDir, "-csi-socket-path", csiSocketPath],
      { MY_NODE_NAME: "n" },
    );
    const { code, stderr } = await second.exited();
    expect(code).toBe(1);
    expect(stderr).toContain(`another process is serving on ${csiSocketPath}`);
    const { identity } = clients(csiSocketPath);
    expect((await identity.probe({})).ready).toBe(true);
  });

  test("refuses to replace a regular file or a directory at the socket path", async () => {
    const file = join(root, "file.sock");
    writeFileSync(file, "not a socket");
    const directory = join(root, "dir.sock");
    mkdirSync(directory);
    for (const path of [file, directory]) {
      const driver = spawnDriver(
        ["-workload-api-socket-dir", socketDir, "-csi-socket-path", path],
        { MY_NODE_NAME: "n" },
      );
      const { code, stderr } = await driver.exited();
      expect(code).toBe(1);
      expect(stderr).toContain(`${path} exists and is not a socket`);
      expect(existsSync(path)).toBe(true);
    }
  });

  test("creates the socket's parent directory", async () => {
    const { csiSocketPath } = await started("deep/er/dir");
    expect(lstatSync(csiSocketPath).isSocket()).toBe(true);
  });

  test("SIGTERM does not wait for a client that keeps its connection open with no call", async () => {
    const { driver, csiSocketPath } = await started("idle-clients");
    // A client that made a call and then stopped reading its connection.
    const stuck = Bun.spawn(
      [process.execPath, join(import.meta.dir, "../helpers/stuck-client.ts"), csiSocketPath],
      {
        stdout: "pipe",
      },
    );
    const reader = stuck.stdout.getReader();
    expect(new TextDecoder().decode((await reader.read()).value)).toBe("connected\n");
    try {
      const started = performance.now();
      const { code } = await driver.stop("SIGTERM");
      // Calls in flight get a grace period of --mount-timeout (30 s) plus a second; an idle
      // connection must not be kept for it.
      expect(performance.now() - started).toBeLessThan(31_000);
      expect(code).toBe(0);
      expect(existsSync(csiSocketPath)).toBe(false);
    } finally {
      stuck.kill("SIGKILL");
    }
  });

  for (const signal of ["SIGTERM", "SIGINT"] as const) {
    test(`${signal}: stops, removes the socket, exits 0`, async () => {
      const { driver, csiSocketPath } = await started(`signal-${signal}`);
      const { code, stderr } = await driver.stop(signal);
      expect(code).toBe(0);
      expect(existsSync(csiSocketPath)).toBe(false);
      expect(stderr).toContain(`shutting down signal=${signal}`);
    });
  }
});

describe("logging", () => {
  test("--log-format json: every line is one JSON object; RPCs are logged with code and duration", async () => {
    const { driver, identity } = await started("json", [
      "--log-format",
      "json",
      "--log-level",
      "debug",
    ]);
    await identity.getPluginInfo({});
    const { stderr } = await driver.stop();
    const lines = stderr
      .trim()
      .split("\n")
      .map((line) => JSON.parse(line));
    expect(lines[0]).toMatchObject({
      level: "info",
      msg: "starting",
      version: pkg.version,
      node_id: "node-1",
    });
    expect(lines.find((line) => line.method === "GetPluginInfo")).toMatchObject({
      level: "debug",
      code: "OK",
    });
    expect(lines.find((line) => line.method === "GetPluginInfo")?.duration_ms).toBeNumber();
  });
});
