// Load on the socket: a thousand connections at once, and clients that connect and say nothing,
// do not stop other callers from being served.
import { expect, test } from "bun:test";
import { join } from "node:path";
import { status } from "@grpc/grpc-js";
import type { Socket } from "bun";
import { Identity } from "../../src/gen/csi/v1/csi_pb.ts";
import { createClient } from "../../src/rpc/client.ts";
import { assertPrivateMountNamespace, clients, startDriver } from "../helpers/driver.ts";
import {
  mountsAt,
  podVolume,
  prepareVolume,
  publishRequest,
  unpublishRequest,
} from "../helpers/kubelet.ts";
import { testbed } from "../helpers/testbed.ts";
import { PATIENCE_MS } from "../helpers/wait.ts";

assertPrivateMountNamespace();

const CONNECTIONS = 1_000;

const { root, socketDir, csiSocketPath } = testbed("socket");

test(`${CONNECTIONS} silent connections, a half-sent preface, and ${CONNECTIONS} concurrent clients`, async () => {
  // This measures the socket under many connections, so the cap is raised above them; the cap
  // itself (connections beyond it closed, live ones served) is tested in tests/e2e/socket.test.ts.
  const driver = await startDriver({
    workloadApiSocketDir: socketDir,
    csiSocketPath,
    args: ["--max-connections", String(4 * CONNECTIONS)],
  });

  // Connections that connect and send nothing, and one that stops half-way through the HTTP/2
  // preface.
  // A burst beyond the listen backlog is refused by the kernel until the driver accepts; a
  // client then tries again, as grpc-js does.
  const silent: Socket[] = [];
  let refused = 0;
  while (silent.length < CONNECTIONS) {
    try {
      silent.push(await Bun.connect({ unix: csiSocketPath, socket: { data() {} } }));
    } catch {
      refused++;
      await Bun.sleep(5);
    }
  }
  const halfway = await Bun.connect({ unix: csiSocketPath, socket: { data() {} } });
  halfway.write("PRI * HTTP/2.0\r\n");

  // Meanwhile, the kubelet's calls are served.
  const started = performance.now();
  const { node, identity } = clients(csiSocketPath);
  const volume = podVolume(join(root, "kubelet"));
  prepareVolume(volume);
  await node.nodePublishVolume(publishRequest(volume), { deadline: Date.now() + PATIENCE_MS });
  expect(mountsAt(volume.targetPath)).toBe(1);
  await node.nodeUnpublishVolume(unpublishRequest(volume), { deadline: Date.now() + PATIENCE_MS });
  expect((await identity.probe({}, { deadline: Date.now() + PATIENCE_MS })).ready).toBe(true);
  const servedMs = performance.now() - started;

  // A thousand clients at once, each on a connection of its own.
  const burstStarted = performance.now();
  const burst = Array.from({ length: CONNECTIONS }, () =>
    createClient(Identity, `unix://${csiSocketPath}`, { "grpc.use_local_subchannel_pool": 1 }),
  );
  // A connection refused while the backlog is full fails the call with UNAVAILABLE, which the
  // kubelet retries; so does this client.
  let retried = 0;
  const answers = await Promise.allSettled(
    burst.map(async (client) => {
      const deadline = Date.now() + PATIENCE_MS;
      for (;;) {
        try {
          return await client.getPluginInfo({}, { deadline });
        } catch (error) {
          if ((error as { code: number }).code !== status.UNAVAILABLE || Date.now() > deadline)
            throw error;
          retried++;
          await Bun.sleep(20);
        }
      }
    }),
  );
  const burstMs = performance.now() - burstStarted;
  for (const client of burst) client.close();
  const failed = answers.filter((answer) => answer.status === "rejected");

  for (const socket of silent) socket.end();
  halfway.end();
  expect((await identity.probe({})).ready).toBe(true);
  const { stderr } = await driver.stop();

  console.log(
    `socket: ${CONNECTIONS} silent connections opened (${refused} connects refused while the backlog was full, then retried); with them open, publish+unpublish+probe took ${servedMs.toFixed(0)} ms; ` +
      `${CONNECTIONS} concurrent clients on their own connections: ${CONNECTIONS - failed.length} answered in ${burstMs.toFixed(0)} ms (${retried} calls retried after a refused connect), ${failed.length} failed`,
  );
  expect(failed.map((f) => String((f as PromiseRejectedResult).reason))).toEqual([]);
  expect(stderr).not.toContain("code=INTERNAL");
}, 300_000);
