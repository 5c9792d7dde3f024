// What the gRPC stack alone costs a call: the driver's own server (src/rpc/server.ts and
// adapter.ts: grpc-js, its connection handling, protobuf-es), serving the CSI services with
// handlers that answer at once. The benchmark drives it with the same client as the driver, so
// that a call's p50 here is what any call to the driver pays before and after its handler.
//
//   bun tests/bench/empty-server.ts CSI_SOCKET_PATH      prints "listening"; SIGTERM stops it
import { Identity, Node } from "../../src/gen/csi/v1/csi_pb.ts";
import { createLogger } from "../../src/ops/log.ts";
import { grpcService } from "../../src/rpc/adapter.ts";
import { InFlightCalls } from "../../src/rpc/in-flight.ts";
import { startServer } from "../../src/rpc/server.ts";

const socketPath = process.argv[2];
if (!socketPath) throw new Error("usage: bun tests/bench/empty-server.ts CSI_SOCKET_PATH");
const logger = createLogger("warn", "text");
const inFlight = new InFlightCalls();
const options = { observe: () => {}, logger, inFlight };
// Every method answers its empty message (an empty NodeGetCapabilities, for one).
const answerAtOnce = <T extends object>() => new Proxy({} as T, { get: () => async () => ({}) });

const server = await startServer(
  socketPath,
  [grpcService(Node, answerAtOnce(), options), grpcService(Identity, answerAtOnce(), options)],
  logger,
  inFlight,
  { maxConnections: 256, idleTimeoutMs: 60_000 },
);
console.log("listening");
process.once("SIGTERM", () => {
  void server.close(1_000).then(() => process.exit(0));
});
