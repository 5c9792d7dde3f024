// The health endpoint, the probe subcommand and the node doctor, on real files, sockets and mounts.
import { afterAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { chmodSync, mkdirSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { Server, ServerCredentials } from "@grpc/grpc-js";
import type { Check } from "../../src/cli/doctor-checks.ts";
import { Identity } from "../../src/gen/csi/v1/csi_pb.ts";
import { grpcService } from "../../src/rpc/adapter.ts";
import { startAgent } from "../helpers/agent.ts";
import {
  assertPrivateMountNamespace,
  BINARY,
  clients,
  type DriverProcess,
  startDriver,
  tempDir,
} from "../helpers/driver.ts";
import { type RawAnswer, rawRequest } from "../helpers/http.ts";
import { podVolume, prepareVolume, publishRequest, unpublishRequest } from "../helpers/kubelet.ts";

assertPrivateMountNamespace();
// Every test here starts the binary (the driver, probe or doctor) and waits on it.
setDefaultTimeout(120_000);

const root = tempDir("operability");
const running: DriverProcess[] = [];
const mounted: string[] = [];

afterAll(async () => {
  for (const driver of running) if (driver.proc.exitCode === null) await driver.stop("SIGKILL");
  for (const path of mounted.reverse()) Bun.spawnSync(["umount", path]);
  rmSync(root, { recursive: true, force: true });
}, 60_000);

function mount(argv: string[], target: string): void {
  mkdirSync(target, { recursive: true });
  expect(Bun.spawnSync(["mount", ...argv, target]).exitCode).toBe(0);
  mounted.push(target);
}

/** Runs the binary with a subcommand; resolves to its exit status and output. */
async function run(argv: string[], env: Record<string, string> = {}, prefix: string[] = []) {
  const proc = Bun.spawn([...prefix, BINARY, ...argv], {
    stdout: "pipe",
    stderr: "pipe",
    env: { PATH: process.env.PATH ?? "/usr/bin:/bin", ...env },
  });
  const [stdout, stderr, code] = await Promise.all([
    new Response(proc.stdout).text(),
    new Response(proc.stderr).text(),
    proc.exited,
  ]);
  return { code, stdout, stderr };
}

let port = 19_800 + Math.floor(Math.random() * 100);

describe("the health endpoint", async () => {
  const socketDir = join(root, "health-agent");
  mkdirSync(socketDir);
  const healthPort = port++;
  const csiSocketPath = join(root, "health", "csi.sock");
  const driver = await startDriver({
    workloadApiSocketDir: socketDir,
    csiSocketPath,
    args: ["--health-addr", `127.0.0.1:${healthPort}`],
  });
  running.push(driver);
  const url = (path: string) => `http://127.0.0.1:${healthPort}${path}`;
  const get = async (path: string) => {
    const response = await fetch(url(path));
    return { status: response.status, body: await response.text() };
  };
  // Answers are computed at most once a second and shared: a change shows within about a second.
  const until = async (
    path: string,
    done: (answer: { status: number; body: string }) => boolean,
  ) => {
    for (let waited = 0; ; waited += 50) {
      const answer = await get(path);
      if (done(answer) || waited > 10_000) return answer;
      await Bun.sleep(50);
    }
  };

  test("/healthz answers 200 while serving", async () => {
    expect(await get("/healthz")).toEqual({ status: 200, body: "ok\n" });
  });

  test("/readyz answers 503 with the reason until the agent's socket accepts connections", async () => {
    const empty = await get("/readyz");
    expect(empty.status).toBe(503);
    expect(empty.body).toContain("holds no socket");
    // A socket file nobody listens on, as a killed agent leaves it.
    const stale = Bun.spawnSync([
      "python3",
      "-c",
      `import socket; socket.socket(socket.AF_UNIX).bind(${JSON.stringify(join(socketDir, "agent.sock"))})`,
    ]);
    expect(stale.exitCode).toBe(0);
    const refused = await until("/readyz", (answer) => !answer.body.includes("holds no socket"));
    expect(refused.status).toBe(503);
    expect(refused.body).toContain("accepts a connection");
    const agent = startAgent(socketDir);
    try {
      const ready = await until("/readyz", (answer) => answer.status === 200);
      expect(ready.status).toBe(200);
      expect(ready.body).toContain("agent.sock accepts connections");
    } finally {
      agent.stop(true);
    }
  });

  test("/metrics: Prometheus text with RPCs, published volumes, mount failures and the process", async () => {
    const agent = startAgent(socketDir);
    const volume = podVolume(join(root, "kubelet"));
    prepareVolume(volume);
    const { node } = clients(csiSocketPath);
    await node.nodePublishVolume(publishRequest(volume));
    const published = await get("/metrics");
    expect(published.status).toBe(200);
    expect(published.body).toContain(
      'spiffe_csi_rpc_requests_total{method="NodePublishVolume",code="OK"} 1',
    );
    expect(published.body).toContain(
      'spiffe_csi_rpc_duration_seconds_count{method="NodePublishVolume",code="OK"} 1',
    );
    expect(published.body).toContain("spiffe_csi_published_volumes 1");
    expect(published.body).toContain('spiffe_csi_mount_failures_total{operation="mount"} 0');
    expect(published.body).toMatch(/^process_resident_memory_bytes \d+/m);
    expect(published.body).toMatch(/^process_open_fds \d+/m);
    await node.nodeUnpublishVolume(unpublishRequest(volume));
    const unpublished = await until("/metrics", (answer) =>
      answer.body.includes("spiffe_csi_published_volumes 0"),
    );
    expect(unpublished.body).toContain("spiffe_csi_published_volumes 0");
    agent.stop(true);
  });

  test("counters are counters: process CPU time, RPCs, mount failures", async () => {
    const body = (await get("/metrics")).body;
    for (const name of [
      "process_cpu_seconds_total",
      "spiffe_csi_rpc_requests_total",
      "spiffe_csi_mount_failures_total",
    ]) {
      expect(body).toContain(`# TYPE ${name} counter`);
    }
  });

  test("unknown paths answer 404", async () => {
    expect((await get("/nope")).status).toBe(404);
  });

  test("the bind address is respected", async () => {
    await expect(fetch(`http://127.0.0.2:${healthPort}/healthz`)).rejects.toThrow();
  });

  test("/healthz answers 503 when the CSI socket no longer answers", async () => {
    const moved = `${csiSocketPath}.moved`;
    renameSync(csiSocketPath, moved);
    try {
      const broken = await until("/healthz", (answer) => answer.status === 503);
      expect(broken.status).toBe(503);
      expect(broken.body).toContain("does not answer");
    } finally {
      renameSync(moved, csiSocketPath);
    }
    expect((await until("/healthz", (answer) => answer.status === 200)).status).toBe(200);
  });

  test("spiffe_csi_agent_up follows the agent's socket", async () => {
    const down = await until("/metrics", (answer) => answer.body.includes("spiffe_csi_agent_up 0"));
    expect(down.body).toContain("# TYPE spiffe_csi_agent_up gauge");
    expect(down.body).toContain("spiffe_csi_agent_up 0");
    const agent = startAgent(socketDir);
    try {
      const up = await until("/metrics", (answer) => answer.body.includes("spiffe_csi_agent_up 1"));
      expect(up.body).toContain("spiffe_csi_agent_up 1");
    } finally {
      agent.stop(true);
    }
  });
});

describe("the health endpoint refuses malformed requests in a few bytes, and logs them", async () => {
  const healthPort = port++;
  const driver = await startDriver({
    workloadApiSocketDir: root,
    csiSocketPath: join(root, "malformed", "csi.sock"),
    args: ["--health-addr", `127.0.0.1:${healthPort}`, "--log-format", "json"],
  });
  running.push(driver);
  // Nothing of the driver's files, source or working directory in an answer.
  const revealsNothing = (answer: RawAnswer) => {
    expect(answer.raw.length).toBeLessThan(400);
    expect(answer.body).not.toMatch(/\/[a-z]|<html|at |\.ts/i);
  };

  test("HTTP/1.0 without Host is valid and answered", async () => {
    const answer = await rawRequest(healthPort, "GET /healthz HTTP/1.0\r\n\r\n");
    expect(answer.status).toBe(200);
    expect(answer.body).toBe("ok\n");
  });

  test.each([
    ["a bad Host", "GET /healthz HTTP/1.1\r\nHost: [::1\r\n\r\n", 400],
    ["a Host with a space", "GET /healthz HTTP/1.1\r\nHost: a b\r\n\r\n", 400],
    ["HTTP/1.1 without Host", "GET /healthz HTTP/1.1\r\n\r\n", 400],
    ["a garbage request line", "GARBAGE\r\n\r\n", 400],
    ["an asterisk target", "GET * HTTP/1.1\r\nHost: x\r\n\r\n", 400],
    ["binary bytes", "\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\r\n\r\n", 400],
    [
      "a 100 kB header",
      `GET /healthz HTTP/1.1\r\nHost: x\r\nX: ${"a".repeat(100_000)}\r\n\r\n`,
      431,
    ],
    ["a POST", "POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}", 405],
  ])("%s gets a short %d", async (_, request, status) => {
    const answer = await rawRequest(healthPort, request);
    expect(answer.status).toBe(status);
    revealsNothing(answer);
  });

  test("the driver's stderr holds only its JSON lines, one per refusal at most", async () => {
    await rawRequest(healthPort, "GET /healthz HTTP/1.1\r\nHost: [::1\r\n\r\n");
    for (let waited = 0; !driver.stderr.includes("malformed HTTP request refused"); waited += 20) {
      if (waited > 10_000) break;
      await Bun.sleep(20);
    }
    const lines = driver.stderr.trimEnd().split("\n");
    const entries = lines.map((line) => JSON.parse(line) as Record<string, unknown>);
    const refusals = entries.filter((entry) => entry.msg === "malformed HTTP request refused");
    expect(refusals.length).toBeGreaterThan(0);
    expect(refusals[0]).toMatchObject({ level: "warn", remote: "127.0.0.1" });
  });
});

test("--health-addr :port answers on IPv4 and IPv6 alike", async () => {
  const healthPort = port++;
  const driver = await startDriver({
    workloadApiSocketDir: root,
    csiSocketPath: join(root, "dual", "csi.sock"),
    args: ["--health-addr", `:${healthPort}`],
  });
  running.push(driver);
  for (const host of ["127.0.0.1", "[::1]"]) {
    expect((await fetch(`http://${host}:${healthPort}/healthz`)).status).toBe(200);
  }
});

describe("metrics of a driver started beside published volumes, and of failed mounts", () => {
  test("counts volumes published before it started; counts mount failures", async () => {
    const socketDir = join(root, "adopt-agent");
    mkdirSync(socketDir);
    const first = await startDriver({
      workloadApiSocketDir: socketDir,
      csiSocketPath: join(root, "adopt1", "csi.sock"),
    });
    const volume = podVolume(join(root, "kubelet"));
    prepareVolume(volume);
    await clients(join(root, "adopt1", "csi.sock")).node.nodePublishVolume(publishRequest(volume));
    await first.stop();

    const bin = join(root, "failing-bin");
    mkdirSync(bin);
    writeFileSync(join(bin, "mount"), "#!/bin/sh\nexit 32\n");
    chmodSync(join(bin, "mount"), 0o755);
    const healthPort = port++;
    const second = await startDriver({
      workloadApiSocketDir: socketDir,
      csiSocketPath: join(root, "adopt2", "csi.sock"),
      args: ["--health-addr", `127.0.0.1:${healthPort}`],
      env: { PATH: `${bin}:${process.env.PATH}` },
    });
    running.push(second);
    const fresh = podVolume(join(root, "kubelet"));
    prepareVolume(fresh);
    await clients(join(root, "adopt2", "csi.sock"))
      .node.nodePublishVolume(publishRequest(fresh))
      .catch(() => {});
    const body = await (await fetch(`http://127.0.0.1:${healthPort}/metrics`)).text();
    expect(body).toContain("spiffe_csi_published_volumes 1");
    expect(body).toContain('spiffe_csi_mount_failures_total{operation="mount"} 1');
    expect(Bun.spawnSync(["umount", volume.targetPath]).exitCode).toBe(0);
  });
});

describe("probe", () => {
  test("exits 0 when the driver is ready", async () => {
    const csiSocketPath = join(root, "probe", "csi.sock");
    running.push(await startDriver({ workloadApiSocketDir: root, csiSocketPath }));
    const { code, stderr } = await run(["probe", "-csi-socket-path", csiSocketPath]);
    expect(stderr).toBe("");
    expect(code).toBe(0);
  });

  test("exits 1 when the plugin answers not ready", async () => {
    const csiSocketPath = join(root, "not-ready.sock");
    const server = new Server();
    const { definition, implementation } = grpcService(
      Identity,
      {
        getPluginInfo: async () => ({ name: "csi.spiffe.io", vendorVersion: "0" }),
        getPluginCapabilities: async () => ({}),
        probe: async () => ({ ready: false }),
      },
      () => {},
    );
    server.addService(definition, implementation);
    await new Promise<void>((resolve, reject) =>
      server.bindAsync(`unix://${csiSocketPath}`, ServerCredentials.createInsecure(), (error) =>
        error ? reject(error) : resolve(),
      ),
    );
    try {
      const { code, stderr } = await run(["probe", "--csi-socket-path", csiSocketPath]);
      expect(code).toBe(1);
      expect(stderr).toContain("is not ready");
    } finally {
      server.forceShutdown();
    }
  });

  test("a mistaken flag is exit 2, never a probe of the default socket", async () => {
    const { code, stderr } = await run(["probe", "-csi-sock", join(root, "nobody.sock")]);
    expect(code).toBe(2);
    expect(stderr).toContain("unknown flag --csi-sock");
  });

  test("exits 1 when nothing answers, within the timeout", async () => {
    const { code, stderr } = await run([
      "probe",
      "--csi-socket-path",
      join(root, "nobody.sock"),
      "--timeout",
      "1",
    ]);
    expect(code).toBe(1);
    expect(stderr).toContain("no answer from");
  });
});

describe("doctor", () => {
  // A set-up that passes every check: agent socket, writable CSI directory, kubelet directory on
  // a shared mount, registration directory, a running driver.
  const good = join(root, "good");
  const agentDir = join(good, "agent");
  const kubeletDir = join(good, "kubelet");
  mkdirSync(agentDir, { recursive: true });
  const agent = startAgent(agentDir);
  mount(["-t", "tmpfs", "kubelet"], kubeletDir);
  expect(Bun.spawnSync(["mount", "--make-shared", kubeletDir]).exitCode).toBe(0);
  mkdirSync(join(kubeletDir, "pods"));
  mkdirSync(join(kubeletDir, "plugins_registry"));
  const csiSocketPath = join(good, "plugin", "csi.sock");
  const baseArgs = ["doctor", "-workload-api-socket-dir", agentDir, "--kubelet-dir", kubeletDir];
  afterAll(() => agent.stop(true), 10_000);

  async function doctor(
    args: string[] = [],
    env: Record<string, string> = {},
    prefix: string[] = [],
  ) {
    const result = await run([...baseArgs, ...args, "--json"], env, prefix);
    return { code: result.code, checks: JSON.parse(result.stdout) as Check[] };
  }
  const status = (checks: Check[], name: string) => checks.find((check) => check.name === name)?.ok;

  test("every check passes on a good set-up, and it exits 0", async () => {
    running.push(await startDriver({ workloadApiSocketDir: agentDir, csiSocketPath }));
    const { code, checks } = await doctor(["-csi-socket-path", csiSocketPath]);
    expect(checks.filter((check) => !check.ok)).toEqual([]);
    expect(checks.map((check) => check.name)).toEqual([
      "Workload API socket directory exists",
      "Workload API socket directory holds a socket",
      "Workload API socket accepts a connection",
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
      "driver answers Probe",
    ]);
    expect(code).toBe(0);
    const text = await run([...baseArgs, "-csi-socket-path", csiSocketPath]);
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
    const typo = await run([...baseArgs, "--kubelet-root", "/x"]);
    expect(typo.code).toBe(2);
    expect(typo.stderr).toContain("unknown flag --kubelet-root");
  });

  test("a CSI socket nobody serves fails", async () => {
    const { checks } = await doctor(["-csi-socket-path", join(root, "nobody-here.sock")]);
    expect(status(checks, "driver answers on the CSI socket")).toBe(false);
  });
});
