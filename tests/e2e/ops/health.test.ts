// The health and metrics endpoint of the real binary: its routes, its refusals, what it counts.
import { describe, expect, setDefaultTimeout, test } from "bun:test";
import { readdirSync, readFileSync, renameSync } from "node:fs";
import { join } from "node:path";
import { startAgent } from "../../helpers/agent.ts";
import { assertPrivateMountNamespace, clients } from "../../helpers/driver.ts";
import { type RawAnswer, rawRequest } from "../../helpers/http.ts";
import { publishRequest, unpublishRequest } from "../../helpers/kubelet.ts";
import { freePort } from "../../helpers/port.ts";
import { testbed } from "../../helpers/testbed.ts";
import { waitFor } from "../../helpers/wait.ts";

assertPrivateMountNamespace();
// Every test here starts the driver and waits on it.
setDefaultTimeout(120_000);

const bed = testbed("health", { agent: false });
const { root } = bed;

describe("the health endpoint", async () => {
  const socketDir = bed.dir("health-agent");
  const healthPort = freePort();
  const csiSocketPath = join(root, "health", "csi.sock");
  const driver = await bed.start(["--health-addr", `127.0.0.1:${healthPort}`], {
    workloadApiSocketDir: socketDir,
    csiSocketPath,
  });
  const url = (path: string) => `http://127.0.0.1:${healthPort}${path}`;
  const get = async (path: string) => {
    const response = await fetch(url(path));
    return { status: response.status, body: await response.text() };
  };
  // Answers are computed at most once a second and shared: a change shows within about a second.
  const until = (path: string, done: (answer: { status: number; body: string }) => boolean) => {
    let last: { status: number; body: string } | undefined;
    return waitFor(
      () => `${path} to change (last answer: ${JSON.stringify(last)})`,
      async () => {
        last = await get(path);
        return done(last) && last;
      },
    );
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
    const volume = bed.volume();
    const { node } = clients(csiSocketPath);
    await node.nodePublishVolume(publishRequest(volume));
    const published = await get("/metrics");
    expect(published.status).toBe(200);
    const publish = 'grpc_type="unary",grpc_service="csi.v1.Node",grpc_method="NodePublishVolume"';
    expect(published.body).toContain(`grpc_server_started_total{${publish}} 1`);
    expect(published.body).toContain(`grpc_server_handled_total{${publish},grpc_code="OK"} 1`);
    expect(published.body).toContain(`grpc_server_handling_seconds_count{${publish}} 1`);
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
      "grpc_server_started_total",
      "grpc_server_handled_total",
      "spiffe_csi_mount_failures_total",
    ]) {
      expect(body).toContain(`# TYPE ${name} counter`);
    }
    expect(body).toContain("# TYPE grpc_server_handling_seconds histogram");
  });

  test("RPC metrics name codes as the gRPC ecosystem does, every method and code from zero", async () => {
    const { node } = clients(csiSocketPath);
    const unpublish = 'grpc_service="csi.v1.Node",grpc_method="NodeUnpublishVolume"';
    const before = await get("/metrics");
    // Shown before any such call, at zero, like the codes no call has answered yet.
    expect(before.body).toContain(
      `grpc_server_handled_total{grpc_type="unary",${unpublish},grpc_code="DeadlineExceeded"} 0`,
    );
    expect(before.body).toContain(
      'grpc_server_started_total{grpc_type="unary",grpc_service="csi.v1.Controller",grpc_method="ControllerGetCapabilities"}',
    );
    const invalid =
      /^grpc_server_handled_total\{[^}]*NodeUnpublishVolume",grpc_code="InvalidArgument"\} (\d+)$/m;
    const count = Number(invalid.exec(before.body)?.[1]);
    await expect(node.nodeUnpublishVolume({ volumeId: "", targetPath: "" })).rejects.toThrow();
    const after = await until("/metrics", (answer) => {
      return Number(invalid.exec(answer.body)?.[1]) === count + 1;
    });
    expect(Number(invalid.exec(after.body)?.[1])).toBe(count + 1);
    // The old names and spellings are gone.
    expect(after.body).not.toContain("INVALID_ARGUMENT");
    expect(after.body).not.toContain("spiffe_csi_rpc_");
  });

  test("process metrics agree with /proc; no process_heap_bytes", async () => {
    const pid = driver.proc.pid;
    const metric = (body: string, name: string) =>
      Number(new RegExp(`^${name} (\\S+)$`, "m").exec(body)?.[1]);
    // The answer is up to a second old: wait until the descriptor count matches one listed now
    // (it never would if the listing's own descriptor were counted).
    // The count is compared with the listing made beside that answer: descriptors come and go
    // with the inspector's children.
    let listed = -1;
    const settled = await until("/metrics", (answer) => {
      listed = readdirSync(`/proc/${pid}/fd`).length;
      return metric(answer.body, "process_open_fds") === listed;
    });
    expect(metric(settled.body, "process_open_fds")).toBe(listed);
    const limits = readFileSync(`/proc/${pid}/limits`, "utf8");
    expect(metric(settled.body, "process_max_fds")).toBe(
      Number(/^Max open files\s+(\d+)/m.exec(limits)?.[1]),
    );
    // /proc/<pid>/stat: fields 14 and 15 are CPU ticks (100 a second), 22 the start in ticks since
    // boot; /proc/stat's btime is the boot time.
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1]?.split(" ") ?? [];
    const bootTime = Number(/^btime (\d+)$/m.exec(readFileSync("/proc/stat", "utf8"))?.[1]);
    const started = bootTime + Number(stat[19]) / 100;
    expect(Math.abs(metric(settled.body, "process_start_time_seconds") - started)).toBeLessThan(2);
    const cpuTicks = (Number(stat[11]) + Number(stat[12])) / 100;
    // Read after the answer was made: at least the metric, less the rounding of its two fields
    // (the kernel cuts user and system time to whole ticks each).
    expect(metric(settled.body, "process_cpu_seconds_total")).toBeLessThanOrEqual(cpuTicks + 0.02);
    expect(metric(settled.body, "process_cpu_seconds_total")).toBeGreaterThan(0);
    const rss =
      Number(/^VmRSS:\s+(\d+) kB$/m.exec(readFileSync(`/proc/${pid}/status`, "utf8"))?.[1]) * 1024;
    expect(metric(settled.body, "process_resident_memory_bytes") / rss).toBeGreaterThan(0.5);
    expect(metric(settled.body, "process_resident_memory_bytes") / rss).toBeLessThan(2);
    expect(settled.body).not.toContain("process_heap_bytes");
    expect(settled.body).not.toContain("nodejs_");
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
  const healthPort = freePort();
  const driver = await bed.start(
    ["--health-addr", `127.0.0.1:${healthPort}`, "--log-format", "json"],
    { csiSocketPath: join(root, "malformed", "csi.sock") },
  );
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
    await driver.waitForLog("malformed HTTP request refused");
    const lines = driver.stderr.trimEnd().split("\n");
    const entries = lines.map((line) => JSON.parse(line) as Record<string, unknown>);
    const refusals = entries.filter((entry) => entry.msg === "malformed HTTP request refused");
    // The refusals above came faster than one a second: a line for the first of each second,
    // and the count of the others in the next.
    expect(refusals.length).toBeGreaterThanOrEqual(1);
    expect(refusals.length).toBeLessThanOrEqual(10);
    expect(refusals[0]).toMatchObject({ level: "warn", remote: "127.0.0.1" });
  });
});

test("--health-addr :port answers on IPv4 and IPv6 alike", async () => {
  const healthPort = freePort();
  await bed.start(["--health-addr", `:${healthPort}`], {
    csiSocketPath: join(root, "dual", "csi.sock"),
  });
  for (const host of ["127.0.0.1", "[::1]"]) {
    expect((await fetch(`http://${host}:${healthPort}/healthz`)).status).toBe(200);
  }
});

describe("metrics of a driver started beside published volumes, and of failed mounts", () => {
  test("counts volumes published before it started; counts mount failures", async () => {
    const socketDir = bed.dir("adopt-agent");
    const first = await bed.start([], {
      workloadApiSocketDir: socketDir,
      csiSocketPath: join(root, "adopt1", "csi.sock"),
    });
    const volume = bed.volume();
    await clients(join(root, "adopt1", "csi.sock")).node.nodePublishVolume(publishRequest(volume));
    await first.stop();

    const healthPort = freePort();
    await bed.start(["--health-addr", `127.0.0.1:${healthPort}`], {
      workloadApiSocketDir: socketDir,
      csiSocketPath: join(root, "adopt2", "csi.sock"),
      env: { PATH: bed.standIn("mount", "exit 32") },
    });
    const fresh = bed.volume();
    await clients(join(root, "adopt2", "csi.sock"))
      .node.nodePublishVolume(publishRequest(fresh))
      .catch(() => {});
    const body = await (await fetch(`http://127.0.0.1:${healthPort}/metrics`)).text();
    expect(body).toContain("spiffe_csi_published_volumes 1");
    expect(body).toContain('spiffe_csi_mount_failures_total{operation="mount"} 1');
    expect(Bun.spawnSync(["umount", volume.targetPath]).exitCode).toBe(0);
  });
});
