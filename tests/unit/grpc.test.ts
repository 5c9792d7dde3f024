import { afterAll, beforeAll, expect, test } from "bun:test";
import { rmSync } from "node:fs";
import { join } from "node:path";
import { Server, ServerCredentials, status } from "@grpc/grpc-js";
import { Identity } from "../../src/gen/csi/v1/csi_pb.ts";
import { type CallRecord, grpcService } from "../../src/rpc/adapter.ts";
import { createClient } from "../../src/rpc/client.ts";
import { RpcError } from "../../src/rpc/status.ts";
import { tempDir } from "../helpers/driver.ts";
import { rpcFailure, sendRawRequest } from "../helpers/rpc.ts";

const dir = tempDir("grpc");
const socketPath = join(dir, "test.sock");
const address = `unix://${socketPath}`;
const server = new Server();
const records: CallRecord[] = [];

beforeAll(async () => {
  const { definition, implementation } = grpcService(
    Identity,
    {
      getPluginInfo: async () => ({ name: "test.example.com", vendorVersion: "1.2.3" }),
      getPluginCapabilities: async () => {
        throw new RpcError(status.FAILED_PRECONDITION, "not today");
      },
      probe: async () => {
        throw new Error("secret internals /etc/shadow");
      },
    },
    (record) => records.push(record),
  );
  server.addService(definition, implementation);
  await new Promise<void>((resolve, reject) =>
    server.bindAsync(address, ServerCredentials.createInsecure(), (error) =>
      error ? reject(error) : resolve(),
    ),
  );
}, 30_000);

afterAll(() => {
  server.forceShutdown();
  rmSync(dir, { recursive: true, force: true });
}, 30_000);

const client = createClient(Identity, address);

test("answers with the handler's message", async () => {
  const info = await client.getPluginInfo({});
  expect(info.name).toBe("test.example.com");
  expect(info.vendorVersion).toBe("1.2.3");
});

test("an RpcError reaches the caller with its code and message", async () => {
  const error = await rpcFailure(client.getPluginCapabilities({}));
  expect(error.code).toBe(status.FAILED_PRECONDITION);
  expect(error.details).toBe("not today");
});

test("an unexpected exception is INTERNAL with a safe message, and is reported in full", async () => {
  const error = await rpcFailure(client.probe({}));
  expect(error.code).toBe(status.INTERNAL);
  expect(error.details).not.toContain("/etc/shadow");
  const record = records.findLast((r) => r.method.name === "Probe");
  expect(record?.code).toBe(status.INTERNAL);
  expect(String((record?.unexpected as Error | undefined)?.message)).toContain("/etc/shadow");
});

test("bytes that are not a valid message are INVALID_ARGUMENT, and the server stays up", async () => {
  const error = await sendRawRequest(
    address,
    "/csi.v1.Identity/GetPluginInfo",
    Buffer.from([0x0a, 0xff, 0xff]),
  );
  expect(error.code).toBe(status.INVALID_ARGUMENT);
  expect(error.details).toContain("csi.v1.GetPluginInfoRequest");
  expect((await client.getPluginInfo({})).name).toBe("test.example.com");
});

test("a method the service does not have is UNIMPLEMENTED", async () => {
  const error = await sendRawRequest(address, "/csi.v1.Node/NodeStageVolume", Buffer.alloc(0));
  expect(error.code).toBe(status.UNIMPLEMENTED);
});

test("every call is reported once with its method, code and duration", () => {
  const names = records.map((r) => r.method.name);
  expect(names.filter((n) => n === "GetPluginCapabilities")).toHaveLength(1);
  for (const record of records) expect(record.durationMs).toBeGreaterThanOrEqual(0);
});
