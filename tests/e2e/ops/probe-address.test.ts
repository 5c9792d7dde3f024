// Connections from the probes' own address cannot starve the probes. The kubelet probes from the
// node's address (127.0.0.1 under the systemd unit), which any local user or hostNetwork pod can
// also connect from: whoever holds that address's connections, a probe on a new connection is
// answered.
import { afterAll, beforeAll, expect, setDefaultTimeout, test } from "bun:test";
import { mkdirSync, rmSync } from "node:fs";
import { connect, type Socket } from "node:net";
import { join } from "node:path";
import type { UnixSocketListener } from "bun";
import { startAgent } from "../../helpers/agent.ts";
import { type DriverProcess, startDriver, tempDir } from "../../helpers/driver.ts";
import { probe, rawRequest } from "../../helpers/http.ts";
import { freePort } from "../../helpers/port.ts";
import { waitFor } from "../../helpers/wait.ts";

// Generous for a loaded machine: covers every test and hook of this file.
setDefaultTimeout(120_000);

// More than the 64 connections one address may hold.
const HOLDERS = 80;
const PROBE_ADDRESS = "127.0.0.1";

const root = tempDir("probe-address");
const socketDir = join(root, "agent-sockets");
mkdirSync(socketDir);
let agent: UnixSocketListener<undefined>;
let driver: DriverProcess;
let port: number;

beforeAll(async () => {
  agent = startAgent(socketDir);
  port = freePort();
  driver = await startDriver({
    workloadApiSocketDir: socketDir,
    csiSocketPath: join(root, "plugin", "csi.sock"),
    args: ["--health-addr", `${PROBE_ADDRESS}:${port}`],
  });
}, 60_000);

afterAll(async () => {
  const { code } = await driver.stop();
  agent.stop(true);
  rmSync(root, { recursive: true, force: true });
  expect(code).toBe(0);
}, 60_000);

/** A keep-alive client from the probes' address, looping on `path`; counts its answers. */
function holder(path: string) {
  const socket: Socket = connect({ host: "127.0.0.1", port, localAddress: PROBE_ADDRESS });
  const state = { socket, answers: 0, closed: false };
  const request = `GET ${path} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\n\r\n`;
  socket.setEncoding("latin1");
  socket.on("data", (chunk: string) => {
    const answers = [...chunk.matchAll(/^HTTP\/1\.1 /gm)].length;
    state.answers += answers;
    if (answers > 0 && !state.closed) socket.write(request);
  });
  socket.on("error", () => {});
  socket.on("close", () => {
    state.closed = true;
  });
  socket.write(request);
  return state;
}

test(`${HOLDERS} looping keep-alive connections from the probes' address: every probe from it is answered`, async () => {
  const holders = Array.from({ length: HOLDERS }, () => holder("/metrics"));
  try {
    // The address holds its 64; the ones beyond are closed unanswered.
    await waitFor(
      () => `the holders to settle (${holders.filter((h) => h.answers > 0).length} answered)`,
      () =>
        holders.every((h) => h.answers > 0 || h.closed) &&
        holders.filter((h) => h.answers > 0 && !h.closed).length === 64,
    );
    expect(holders.filter((h) => h.closed && h.answers === 0)).toHaveLength(HOLDERS - 64);
    // The kubelet's probes meanwhile: a connection each, one second to answer. (Fewer than the
    // ten a second the address may have answered beyond its cap, however fast they come.)
    for (let round = 0; round < 4; round++) {
      for (const path of ["/healthz", "/readyz"]) {
        const answer = await probe(port, path, 1_000, PROBE_ADDRESS);
        expect(`${path} ${answer.status}`).toBe(`${path} 200`);
      }
    }
    // A probe's connection beyond the cap gets its answer and is closed: it cannot be held.
    const extra = holder("/healthz");
    await waitFor("the extra connection to be closed", () => extra.closed);
    expect(extra.answers).toBe(1);
    // Beyond the cap, only probes are answered: another request on a new connection is not.
    const other = await rawRequest(
      port,
      `GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\n\r\n`,
      5_000,
      PROBE_ADDRESS,
    );
    expect(other.status).toBe(0);
    // The holders kept theirs throughout.
    expect(holders.filter((h) => h.answers > 0 && !h.closed)).toHaveLength(64);
    // A flood of probe requests beyond the cap gets ten answers a second at most: clients that
    // reconnect as soon as they are answered cannot turn the allowance into load.
    const started = performance.now();
    const flood = await Promise.all(
      Array.from({ length: 40 }, () =>
        probe(port, "/healthz", 5_000, PROBE_ADDRESS).catch(() => undefined),
      ),
    );
    const seconds = Math.ceil((performance.now() - started) / 1_000) + 1;
    const answered = flood.filter((answer) => answer?.status === 200).length;
    expect(answered).toBeGreaterThan(0);
    expect(answered).toBeLessThanOrEqual(10 * seconds);
    expect(answered).toBeLessThan(flood.length);
  } finally {
    for (const h of holders) h.socket.destroy();
  }
});
