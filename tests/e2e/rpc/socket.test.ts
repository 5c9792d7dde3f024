// The CSI and registration sockets: a directory others could write to is refused, only the
// socket the driver bound is ever removed, and a flood of idle connections neither exhausts the
// driver's descriptors nor stops calls on live connections.
import { describe, expect, setDefaultTimeout, test } from "bun:test";
import {
  chmodSync,
  chownSync,
  existsSync,
  lstatSync,
  mkdirSync,
  readFileSync,
  unlinkSync,
  writeFileSync,
} from "node:fs";
import { join } from "node:path";
import type { Socket } from "bun";
import type { Check } from "../../../src/cli/doctor-checks.ts";
import { assertPrivateMountNamespace, clients, runBinary } from "../../helpers/driver.ts";
import { mountsAt, publishRequest, unpublishRequest } from "../../helpers/kubelet.ts";
import { freePort } from "../../helpers/port.ts";
import { testbed } from "../../helpers/testbed.ts";
import { waitFor } from "../../helpers/wait.ts";

assertPrivateMountNamespace();
// Generous for a loaded machine: covers every test and hook of this file.
setDefaultTimeout(120_000);

const bed = testbed("socket");
const { root, socketDir: agentDir } = bed;
// Other users may look in (as on a node's /var/lib), so that the refusals below are what keeps
// them from the socket, not this directory's mode.
chmodSync(root, 0o755);
const NOBODY = 65534;

/** A directory of the given mode (and owner), for a socket. */
function directory(name: string, mode: number, owner = 0): string {
  const dir = join(root, name);
  mkdirSync(dir);
  chmodSync(dir, mode);
  chownSync(dir, owner, owner);
  return dir;
}

/** Runs a command as the unprivileged user nobody; resolves to its exit status. */
function asNobody(argv: string[]): number {
  return Bun.spawnSync([
    "setpriv",
    `--reuid=${NOBODY}`,
    `--regid=${NOBODY}`,
    "--clear-groups",
    ...argv,
  ]).exitCode;
}

/** A listening socket at `path`, bound and held by the unprivileged user nobody. */
function plantListeningSocket(path: string): { kill(): void } {
  const proc = Bun.spawn(
    [
      "setpriv",
      `--reuid=${NOBODY}`,
      `--regid=${NOBODY}`,
      "--clear-groups",
      // The system's interpreter: another user may not reach root's own.
      "/usr/bin/python3",
      "-c",
      `import socket, time; s = socket.socket(socket.AF_UNIX); s.bind(${JSON.stringify(path)}); s.listen(); print("ok", flush=True); time.sleep(60)`,
    ],
    { stdout: "pipe" },
  );
  return proc;
}

async function refusedStart(argv: string[]): Promise<string> {
  const { code, stderr } = await runBinary(["-workload-api-socket-dir", agentDir, ...argv], {
    MY_NODE_NAME: "n",
  });
  expect(code).toBe(1);
  const lines = stderr.trim().split("\n");
  expect(lines.filter((line) => line.startsWith("spiffe-csi-driver: "))).toHaveLength(1);
  return lines.at(-1) ?? "";
}

describe("the socket's directory", () => {
  test("world-writable, sticky or not: refused with one line, exit 1, no socket", async () => {
    for (const mode of [0o777, 0o1777, 0o770]) {
      const dir = directory(`writable-${mode.toString(8)}`, mode);
      const socketPath = join(dir, "csi.sock");
      const line = await refusedStart(["-csi-socket-path", socketPath]);
      expect(line).toBe(
        `spiffe-csi-driver: refusing to serve on ${socketPath}: the socket directory ${dir} is writable by its group or by others (mode ${mode.toString(8).padStart(4, "0")})`,
      );
      expect(existsSync(socketPath)).toBe(false);
    }
  }, 60_000);

  test("owned by another user: refused", async () => {
    const dir = directory("nobodys", 0o755, NOBODY);
    const line = await refusedStart(["-csi-socket-path", join(dir, "csi.sock")]);
    expect(line).toContain(`the socket directory ${dir} is owned by uid ${NOBODY}`);
  }, 30_000);

  test("below a directory others can write to (not sticky): refused; below /tmp's kind: served", async () => {
    const open = directory("open-parent", 0o777);
    const line = await refusedStart(["-csi-socket-path", join(open, "plugin", "csi.sock")]);
    expect(line).toContain(`${open}, above the socket directory ${join(open, "plugin")}`);
    expect(existsSync(join(open, "plugin"))).toBe(false);
    const sticky = directory("sticky-parent", 0o1777);
    const socketPath = join(sticky, "plugin", "csi.sock");
    await bed.start([], { csiSocketPath: socketPath });
    expect(lstatSync(join(sticky, "plugin")).mode & 0o777).toBe(0o750);
  }, 30_000);

  test("the findings: another user's listening socket in a world-writable directory is refused, not trusted", async () => {
    const dir = directory("planted", 0o1777);
    const socketPath = join(dir, "csi.sock");
    const planted = plantListeningSocket(socketPath);
    try {
      await waitFor("the planted socket to appear", () => existsSync(socketPath));
      const line = await refusedStart(["-csi-socket-path", socketPath]);
      expect(line).toContain("is writable by its group or by others");
    } finally {
      planted.kill();
    }
  }, 30_000);

  test("in a safe directory, another user can neither replace the socket nor plant one", async () => {
    const dir = directory("safe", 0o755);
    const socketPath = join(dir, "csi.sock");
    const driver = await bed.start([], { csiSocketPath: socketPath });
    expect(asNobody(["rm", "-f", socketPath])).not.toBe(0);
    expect(asNobody(["touch", join(dir, "other.sock")])).not.toBe(0);
    expect((await clients(socketPath).identity.probe({})).ready).toBe(true);
    const { code } = await driver.stop();
    expect(code).toBe(0);
    expect(existsSync(socketPath)).toBe(false);
  }, 30_000);

  test("the registration socket's directory is checked too", async () => {
    const registry = directory("registry", 0o777);
    const line = await refusedStart([
      "-csi-socket-path",
      join(root, "with-registry", "csi.sock"),
      "--kubelet-registration-dir",
      registry,
    ]);
    expect(line).toContain(
      `the socket directory ${registry} is writable by its group or by others`,
    );
    expect(existsSync(join(root, "with-registry", "csi.sock"))).toBe(false);
  }, 30_000);
});

test("the doctor reports a socket directory the driver would refuse, with the fix", async () => {
  const doctor = async (socketPath: string) => {
    const argv = ["doctor", "-workload-api-socket-dir", agentDir, "-csi-socket-path", socketPath];
    const { code, stdout } = await runBinary([...argv, "--json"]);
    expect(code).toBe(1);
    const checks = JSON.parse(stdout) as Check[];
    return checks.find((check) => check.name === "CSI socket directory is safe");
  };
  const open = directory("doctor-open", 0o1777);
  const unsafe = await doctor(join(open, "csi.sock"));
  expect(unsafe?.ok).toBe(false);
  expect(unsafe?.detail).toBe(
    `the socket directory ${open} is writable by its group or by others (mode 1777)`,
  );
  expect(unsafe?.fix).toContain("chmod 0750");
  const safe = await doctor(join(root, "doctor-new", "csi.sock"));
  expect(safe?.ok).toBe(true);
}, 30_000);

describe("removing the socket on shutdown", () => {
  test("a regular file that replaced the socket before SIGTERM is left in place", async () => {
    const registry = directory("registry-ok", 0o750);
    const socketPath = join(root, "replaced", "csi.sock");
    const registrationPath = join(registry, "csi.spiffe.io-reg.sock");
    const driver = await bed.start(["--kubelet-registration-dir", registry], {
      csiSocketPath: socketPath,
    });
    for (const path of [socketPath, registrationPath]) {
      expect(lstatSync(path).isSocket()).toBe(true);
      unlinkSync(path);
      writeFileSync(path, "not the driver's\n");
    }
    const { code } = await driver.stop();
    expect(code).toBe(0);
    for (const path of [socketPath, registrationPath]) {
      expect(readFileSync(path, "utf8")).toBe("not the driver's\n");
    }
  }, 30_000);

  test("the driver's own sockets are removed, and nothing else in their directories", async () => {
    const registry = directory("registry-clean", 0o750);
    const socketPath = join(root, "clean", "csi.sock");
    const driver = await bed.start(["--kubelet-registration-dir", registry], {
      csiSocketPath: socketPath,
    });
    const { code } = await driver.stop();
    expect(code).toBe(0);
    expect(existsSync(socketPath)).toBe(false);
    expect(existsSync(join(registry, "csi.spiffe.io-reg.sock"))).toBe(false);
    expect(existsSync(join(root, "clean"))).toBe(true);
  }, 30_000);
});

/**
 * Opens `count` connections that never send a byte; counts the ones the driver closes (a
 * connection it closes before the connect completes fails with ECONNRESET). Like any
 * client, it tries again a moment later when the kernel refuses a connection because the listen
 * backlog is full (it fills faster than the driver accepts).
 */
async function idleConnections(path: string, count: number) {
  const sockets: Socket<undefined>[] = [];
  const state = { closed: 0 };
  const handlers = {
    data() {},
    close() {
      state.closed++;
    },
  };
  for (let opened = 0; opened < count; ) {
    try {
      sockets.push(await Bun.connect({ unix: path, socket: handlers }));
      opened++;
    } catch (error) {
      const code = (error as { code?: string }).code;
      if (code === "ECONNRESET") {
        // Accepted and closed by the driver (over its cap) before the connect completed.
        opened++;
        state.closed++;
        continue;
      }
      // A full listen backlog: refused, or EAGAIN for a non-blocking connect on a Unix socket.
      if (code !== "ECONNREFUSED" && code !== "EAGAIN") throw error;
      await Bun.sleep(5);
    }
  }
  return {
    get closed() {
      return state.closed;
    },
    end() {
      for (const socket of sockets) socket.end();
    },
  };
}

/** Starts the driver with an open-file limit, as a container runtime or systemd might set it. */
async function startLimited(nofile: number, name: string, args: string[]) {
  const socketPath = join(root, name, "csi.sock");
  const prefix = ["prlimit", `--nofile=${nofile}:${nofile}`];
  const driver = await bed.start(args, { csiSocketPath: socketPath, prefix });
  return { driver, socketPath };
}

describe("connections", () => {
  test("the finding: 1,500 idle connections at an open-file limit of 1,024; /healthz and the kubelet's calls are served", async () => {
    const healthPort = freePort();
    const { driver, socketPath } = await startLimited(1024, "flood", [
      "--health-addr",
      `127.0.0.1:${healthPort}`,
    ]);
    const { identity, node } = clients(socketPath);
    expect((await identity.probe({})).ready).toBe(true);

    const flood = await idleConnections(socketPath, 1500);
    try {
      // Beyond the cap (256), a connection is closed for each one accepted.
      await waitFor(
        () => `the driver to close the connections over its cap (closed ${flood.closed})`,
        () => flood.closed >= 1500 - 256,
      );
      const volume = bed.volume();
      await node.nodePublishVolume(publishRequest(volume), { deadline: Date.now() + 30_000 });
      expect(mountsAt(volume.targetPath)).toBe(1);
      await node.nodeUnpublishVolume(unpublishRequest(volume), { deadline: Date.now() + 30_000 });
      expect(mountsAt(volume.targetPath)).toBe(0);
      // The kubelet connects for each call: a new connection is served, in place of a silent one.
      const dialled = clients(socketPath, { "grpc.use_local_subchannel_pool": 1 });
      const probed = await dialled.identity.probe({}, { deadline: Date.now() + 30_000 });
      expect(probed.ready).toBe(true);
      dialled.identity.close();
      const health = await fetch(`http://127.0.0.1:${healthPort}/healthz`);
      expect(health.status).toBe(200);
      expect(driver.proc.exitCode).toBeNull();
      expect(driver.stderr.match(/too many connections/g)).toHaveLength(1);
    } finally {
      flood.end();
    }
    // Once the flood is gone, a new client is served.
    const fresh = clients(socketPath, { "grpc.use_local_subchannel_pool": 1 });
    expect((await fresh.identity.probe({}, { deadline: Date.now() + 30_000 })).ready).toBe(true);
    fresh.identity.close();
    const { code } = await driver.stop();
    expect(code).toBe(0);
  }, 180_000);

  test("at an open-file limit of 256: idle connections are closed after the idle timeout, then a new client is served", async () => {
    const { driver, socketPath } = await startLimited(256, "idle", [
      "--max-connections",
      "64",
      "--connection-idle-timeout",
      "1",
    ]);
    const flood = await idleConnections(socketPath, 400);
    // Over the cap: closed at once; under it: closed when idle for a second.
    await waitFor(
      () => `the driver to close every idle connection (closed ${flood.closed})`,
      () => flood.closed === 400,
    );
    const { identity } = clients(socketPath);
    expect((await identity.probe({}, { deadline: Date.now() + 30_000 })).ready).toBe(true);
    expect(driver.proc.exitCode).toBeNull();
    const { code } = await driver.stop();
    expect(code).toBe(0);
  }, 120_000);
});
