// The health endpoint in-process, through its options: the readiness hook, the shared checks,
// logging through the driver's logger, and pacing of keep-alive connections.
import { afterAll, expect, setDefaultTimeout, test } from "bun:test";
import { rmSync } from "node:fs";
import { connect } from "node:net";
import { join } from "node:path";
import { cached } from "../../src/cache.ts";
import { startHealthServer } from "../../src/health.ts";
import { createLogger } from "../../src/log.ts";
import { Metrics } from "../../src/metrics.ts";
import { startAgent } from "../helpers/agent.ts";
import { tempDir } from "../helpers/driver.ts";
import { rawRequest } from "../helpers/http.ts";
import { waitFor } from "../helpers/wait.ts";

// Generous for a loaded machine: covers every test and hook of this file.
setDefaultTimeout(120_000);

const root = tempDir("health-unit");
const agent = startAgent(root);
const lines: string[] = [];
let problem: string | undefined = "SELinux labels cannot be applied";
const port = 19_700 + Math.floor(Math.random() * 90);
const server = await startHealthServer({
  address: `127.0.0.1:${port}`,
  workloadApiSocketDir: root,
  csiSocketPath: join(root, "csi.sock"),
  serving: () => true,
  readinessProblem: () => problem,
  metrics: new Metrics("test", () => 0),
  logger: createLogger("info", "json", (line) => lines.push(line)),
});
afterAll(() => {
  server.close();
  agent.stop(true);
  rmSync(root, { recursive: true, force: true });
});

const get = (path: string) =>
  rawRequest(port, `GET ${path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n`);

test("readinessProblem: /readyz answers 503 with its text, before the agent check", async () => {
  const refused = await get("/readyz");
  expect(refused.status).toBe(503);
  expect(refused.body).toBe("SELinux labels cannot be applied\n");
  problem = undefined;
  const ready = await get("/readyz");
  expect(ready.status).toBe(200);
  expect(ready.body).toContain("agent.sock accepts connections");
});

test("spiffe_csi_agent_up is 1 while the agent's socket accepts connections", async () => {
  expect((await get("/metrics")).body).toContain("spiffe_csi_agent_up 1");
});

test("a malformed request is one JSON line through the driver's logger", async () => {
  const before = lines.length;
  const answer = await rawRequest(port, "GET /healthz HTTP/1.1\r\nHost: [::1\r\n\r\n");
  expect(answer.status).toBe(400);
  const logged = lines.slice(before).map((line) => JSON.parse(line));
  expect(logged).toHaveLength(1);
  expect(logged[0]).toMatchObject({ msg: "malformed HTTP request refused", level: "warn" });
});

test("a keep-alive connection gets one answer a second; a new connection is answered meanwhile", async () => {
  const socket = connect({ host: "127.0.0.1", port });
  const arrivals: number[] = [];
  const started = performance.now();
  const three = new Promise<void>((resolve) => {
    socket.on("data", (chunk) => {
      for (const _ of chunk.toString().matchAll(/^HTTP\/1\.1 /gm)) {
        arrivals.push(performance.now() - started);
      }
      if (arrivals.length >= 3) resolve();
    });
  });
  const request = `GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\n\r\n`;
  socket.write(request.repeat(3));
  // Meanwhile, a probe on a connection of its own is not held back.
  expect((await get("/healthz")).status).toBeGreaterThan(0);
  await three;
  socket.destroy();
  expect(arrivals[2] ?? 0).toBeGreaterThanOrEqual(1_900);
}, 30_000);

test("cached: concurrent callers share one computation, and callers within the interval its result", async () => {
  let runs = 0;
  const value = cached(async () => {
    runs++;
    await Bun.sleep(20);
    return runs;
  }, 60_000);
  expect(await Promise.all([value(), value(), value()])).toEqual([1, 1, 1]);
  expect(await value()).toBe(1);
});

test("cached: it runs again once the interval has passed", async () => {
  let runs = 0;
  const value = cached(async () => ++runs, 1);
  expect(await value()).toBe(1);
  const computed = performance.now();
  await waitFor("the interval to pass", () => performance.now() > computed + 2);
  expect(await value()).toBe(2);
});

test("cached: a failure is shared by its waiters but not kept", async () => {
  let runs = 0;
  const value = cached(async () => {
    runs++;
    if (runs === 1) throw new Error("first run fails");
    return runs;
  }, 60_000);
  const waiters = await Promise.allSettled([value(), value()]);
  expect(waiters.map((waiter) => waiter.status)).toEqual(["rejected", "rejected"]);
  expect(await value()).toBe(2);
});
