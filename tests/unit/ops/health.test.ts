// The health endpoint in-process, through its options: the readiness hook, the shared checks,
// logging through the driver's logger, pacing of keep-alive connections, pipelined requests and
// the cap of connections per remote address.
import { expect, setDefaultTimeout, test } from "bun:test";
import { connect } from "node:net";
import { join } from "node:path";
import { startInspector } from "../../../src/cli/inspector.ts";
import { PublishedVolumes } from "../../../src/csi/census.ts";
import { startHealthServer } from "../../../src/ops/health.ts";
import { createLogger } from "../../../src/ops/log.ts";
import { Metrics } from "../../../src/ops/metrics.ts";
import { rawRequest } from "../../helpers/http.ts";
import { freePort } from "../../helpers/port.ts";
import { testbed } from "../../helpers/testbed.ts";
import { waitFor } from "../../helpers/wait.ts";

// Generous for a loaded machine: covers every test and hook of this file.
setDefaultTimeout(120_000);

const bed = testbed("health-unit");
// No CSI socket here: /healthz answers 503, the agent's socket is there: /readyz can pass.
const { root, socketDir } = bed;
const lines: string[] = [];
let problem: string | undefined = "SELinux labels cannot be applied";
let note: string | undefined;
let problemChecks = 0;
const inspector = startInspector(10_000);
const port = freePort();
const server = await startHealthServer({
  address: `127.0.0.1:${port}`,
  workloadApiSocketDir: socketDir,
  csiSocketPath: join(root, "csi.sock"),
  serving: () => true,
  inspector,
  readiness: async () => {
    problemChecks++;
    return { problem, note };
  },
  metrics: new Metrics("test", () => new PublishedVolumes({ workloadApiSocketDir: root }).count()),
  logger: createLogger("info", "json", (line) => lines.push(line)),
});
bed.beforeCleanup(() => {
  server.close();
  inspector.close();
});

const get = (path: string, from?: string) =>
  rawRequest(
    port,
    `GET ${path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n`,
    5_000,
    from,
  );

/** A keep-alive connection from `from`, open once its first request (for `path`) is answered. */
async function keptOpen(from: string, path = "/metrics") {
  const socket = connect({ host: "127.0.0.1", port, localAddress: from });
  let received = "";
  let closed = false;
  socket.setEncoding("latin1");
  socket.on("data", (chunk: string) => {
    received += chunk;
  });
  socket.on("error", () => {});
  socket.on("close", () => {
    closed = true;
  });
  socket.write(`GET ${path} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\n\r\n`);
  await waitFor("an answer or the close", () => closed || received.includes("\r\n\r\n"));
  return { socket, answered: received.startsWith("HTTP/1.1 "), closed: () => closed };
}

test("readiness: /readyz answers 503 with its problem, before the agent check; a note shows either way", async () => {
  const refused = await get("/readyz");
  expect(refused.status).toBe(503);
  expect(refused.body).toBe("SELinux labels cannot be applied\n");
  problem = undefined;
  // The problem's answer is kept for an interval: the change shows within it.
  const ready = await waitFor("/readyz to answer 200", async () => {
    const answer = await get("/readyz");
    return answer.status === 200 && answer;
  });
  expect(ready.body).toContain("agent.sock accepts connections");
  note = "labelling is best effort here";
  const noted = await waitFor("/readyz to show the note", async () => {
    const answer = await get("/readyz");
    return answer.body.includes("note: labelling is best effort here") && answer;
  });
  expect(noted.status).toBe(200);
  note = undefined;
});

test("readiness: concurrent /readyz requests run it once per interval", async () => {
  // A fresh interval: the check runs once the previous answer has expired.
  const before = problemChecks;
  await waitFor("a new interval", async () => {
    await get("/readyz");
    return problemChecks > before;
  });
  const after = problemChecks;
  const started = performance.now();
  const answers = await Promise.all(Array.from({ length: 50 }, () => get("/readyz")));
  const elapsed = performance.now() - started;
  expect(answers.map((answer) => answer.status)).toEqual(answers.map(() => 200));
  // One run at most for each interval the requests spanned, and never one per request.
  expect(problemChecks - after).toBeLessThanOrEqual(Math.ceil(elapsed / 1_000));
  expect(problemChecks - after).toBeLessThan(answers.length);
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
  const request = `GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\n\r\n`;
  // Each request once the previous one is answered, as a keep-alive client sends them.
  const three = new Promise<void>((resolve) => {
    socket.on("data", (chunk) => {
      for (const _ of chunk.toString().matchAll(/^HTTP\/1\.1 /gm)) {
        arrivals.push(performance.now() - started);
      }
      if (arrivals.length >= 3) resolve();
      else socket.write(request);
    });
  });
  socket.write(request);
  // Meanwhile, a probe on a connection of its own is not held back.
  expect((await get("/healthz")).status).toBe(503);
  await three;
  socket.destroy();
  expect(arrivals[2] ?? 0).toBeGreaterThanOrEqual(1_900);
}, 30_000);

test("a connection that sends a request before its previous one is answered is closed", async () => {
  const request = `GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\n\r\n`;
  const socket = connect({ host: "127.0.0.1", port });
  let received = "";
  socket.setEncoding("latin1");
  socket.on("data", (chunk: string) => {
    received += chunk;
  });
  const closed = new Promise((resolve) => socket.on("close", resolve));
  socket.on("error", () => {});
  socket.write(request.repeat(1_000));
  // The server closes it: at most the first request is answered, none of the other 999.
  await closed;
  expect([...received.matchAll(/^HTTP\/1\.1 /gm)].length).toBeLessThanOrEqual(1);
  // The server itself goes on answering.
  expect((await get("/healthz")).status).toBe(503);
});

test("one remote address holds at most 64 connections; beyond them only its probes are answered, and others meanwhile", async () => {
  const from = "127.0.0.3";
  const held = await Promise.all(Array.from({ length: 64 }, () => keptOpen(from)));
  expect(held.filter((c) => c.answered)).toHaveLength(64);
  // The 65th from that address is closed at its first request, unanswered.
  const refused = await keptOpen(from);
  expect(refused.answered).toBe(false);
  expect(refused.closed()).toBe(true);
  // Unless it is a probe's: answered, and then closed, so that it cannot be held.
  for (const path of ["/healthz", "/readyz"]) {
    const probed = await keptOpen(from, path);
    expect(probed.answered).toBe(true);
    await waitFor(`the connection of the ${path} probe to be closed`, () => probed.closed());
  }
  // Another address is answered.
  expect((await get("/healthz", "127.0.0.4")).status).toBe(503);
  // Once one closes, the address gets a connection again.
  held[0]?.socket.destroy();
  const again = await waitFor("a connection from the address to be answered", async () => {
    const next = await keptOpen(from);
    if (next.answered) return next;
    return false;
  });
  for (const c of [...held, again]) c.socket.destroy();
});
