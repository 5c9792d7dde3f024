import { expect, test } from "bun:test";
import { status } from "@grpc/grpc-js";
import { Node } from "../../../src/gen/csi/v1/csi_pb.ts";
import { createLogger, type LogLevel } from "../../../src/ops/log.ts";
import type { CallRecord } from "../../../src/rpc/adapter.ts";
import { rpcLogger } from "../../../src/rpc/call-log.ts";

const publish = Node.methods.find((method) => method.name === "NodePublishVolume");
if (!publish) throw new Error("no NodePublishVolume in the CSI descriptor");
const request = { volumeId: "vol-1", targetPath: "/var/lib/kubelet/pods/p/volumes/x/mount" };
const succeeded: CallRecord = {
  method: publish,
  request,
  code: status.OK,
  details: "",
  durationMs: 1.234,
};
const failed: CallRecord = {
  method: publish,
  request,
  code: status.FAILED_PRECONDITION,
  details: "refused",
  durationMs: 2,
};

function linesAt(level: LogLevel, ...calls: CallRecord[]): string[] {
  const lines: string[] = [];
  const log = rpcLogger(createLogger(level, "json", (line) => lines.push(line)));
  for (const call of calls) log(call);
  return lines;
}

test("a call that succeeded is one debug line, with its method, volume and duration", () => {
  const [line, ...more] = linesAt("debug", succeeded);
  expect(more).toEqual([]);
  expect(JSON.parse(line ?? "{}")).toMatchObject({
    level: "debug",
    msg: "rpc",
    method: "NodePublishVolume",
    volume_id: "vol-1",
    code: "OK",
    duration_ms: 1.23,
  });
});

test("below debug, a call that succeeded writes nothing; one that failed is still an error line", () => {
  const lines = linesAt("info", succeeded, failed);
  expect(lines).toHaveLength(1);
  expect(JSON.parse(lines[0] ?? "{}")).toMatchObject({
    level: "error",
    method: "NodePublishVolume",
    code: "FAILED_PRECONDITION",
    details: "refused",
  });
});
