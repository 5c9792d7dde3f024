import { beforeEach, expect, test } from "bun:test";
import { join } from "node:path";
import { Server, ServerCredentials, status } from "@grpc/grpc-js";
import { Identity } from "../../../src/gen/csi/v1/csi_pb.ts";
import { createLogger } from "../../../src/ops/log.ts";
import { type CallRecord, grpcService } from "../../../src/rpc/adapter.ts";
import { createClient } from "../../../src/rpc/client.ts";
import { RpcError } from "../../../src/rpc/status.ts";
import { rpcFailure, sendRawRequest } from "../../helpers/rpc.ts";
import { testbed } from "../../helpers/testbed.ts";

const bed = testbed("grpc", { agent: false });
const address = `unix://${join(bed.root, "test.sock")}`;
const server = new Server();
// The calls of the test running now, and what the driver's logger wrote meanwhile.
const records: CallRecord[] = [];
const logged: string[] = [];
let failObserver = false;
// GetPluginInfo takes at least this long, so that a reported duration can be checked.
const HANDLER_MS = 20;

const { definition, implementation } = grpcService(
  Identity,
  {
    getPluginInfo: async () => {
      await Bun.sleep(HANDLER_MS);
      return { name: "test.example.com", vendorVersion: "1.2.3" };
    },
    getPluginCapabilities: async () => {
      throw new RpcError(status.FAILED_PRECONDITION, "not today");
    },
    probe: async () => {
      throw new Error("secret internals /etc/shadow");
    },
  },
  {
    observe: (record) => {
      if (failObserver) throw new Error("the log is gone");
      records.push(record);
    },
    logger: createLogger("info", "json", (line) => logged.push(line)),
  },
);
server.addService(definition, implementation);
await new Promise<void>((resolve, reject) =>
  server.bindAsync(address, ServerCredentials.createInsecure(), (error) =>
    error ? reject(error) : resolve(),
  ),
);
bed.beforeCleanup(() => server.forceShutdown());

const client = createClient(Identity, address);

beforeEach(() => {
  records.length = 0;
  logged.length = 0;
  failObserver = false;
}, 30_000);

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
  expect(error.details).toBe("internal error (see the driver log)");
  expect(records).toHaveLength(1);
  expect(records[0]?.code).toBe(status.INTERNAL);
  expect(records[0]?.unexpected).toEqual(new Error("secret internals /etc/shadow"));
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

test("every call is reported once, after it is answered, with its method, code and duration", async () => {
  await client.getPluginInfo({});
  await rpcFailure(client.getPluginCapabilities({}));
  expect(records.map((r) => [r.method.name, r.code, r.details])).toEqual([
    ["GetPluginInfo", status.OK, ""],
    ["GetPluginCapabilities", status.FAILED_PRECONDITION, "not today"],
  ]);
  expect(records[0]?.durationMs).toBeGreaterThanOrEqual(HANDLER_MS);
  expect(records[0]?.request).toEqual(
    expect.objectContaining({ $typeName: "csi.v1.GetPluginInfoRequest" }),
  );
});

test("an observer that throws is reported through the logger, and the call is still answered", async () => {
  failObserver = true;
  expect((await client.getPluginInfo({})).name).toBe("test.example.com");
  expect(logged).toHaveLength(1);
  expect(JSON.parse(logged[0] ?? "")).toMatchObject({
    level: "error",
    msg: "call observer failed",
    method: "GetPluginInfo",
    error: "the log is gone",
  });
});
