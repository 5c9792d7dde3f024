// `spiffe-csi-driver probe` against the real driver, a server that is not ready, and nobody.
import { describe, expect, setDefaultTimeout, test } from "bun:test";
import { join } from "node:path";
import { Server, ServerCredentials } from "@grpc/grpc-js";
import { Identity } from "../../../src/gen/csi/v1/csi_pb.ts";
import { createLogger } from "../../../src/ops/log.ts";
import { grpcService } from "../../../src/rpc/adapter.ts";
import { runBinary } from "../../helpers/driver.ts";
import { testbed } from "../../helpers/testbed.ts";

// Every test here starts the binary and waits on it.
setDefaultTimeout(120_000);

const bed = testbed("probe", { agent: false });
const { root } = bed;

describe("probe", () => {
  test("exits 0 when the driver is ready", async () => {
    const csiSocketPath = join(root, "probe", "csi.sock");
    await bed.start([], { csiSocketPath });
    const { code, stderr } = await runBinary(["probe", "-csi-socket-path", csiSocketPath]);
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
      { observe: () => {}, logger: createLogger("error", "text", () => {}) },
    );
    server.addService(definition, implementation);
    await new Promise<void>((resolve, reject) =>
      server.bindAsync(`unix://${csiSocketPath}`, ServerCredentials.createInsecure(), (error) =>
        error ? reject(error) : resolve(),
      ),
    );
    try {
      const { code, stderr } = await runBinary(["probe", "--csi-socket-path", csiSocketPath]);
      expect(code).toBe(1);
      expect(stderr).toContain("is not ready");
    } finally {
      server.forceShutdown();
    }
  });

  test("a mistaken flag is exit 2, never a probe of the default socket", async () => {
    const { code, stderr } = await runBinary(["probe", "-csi-sock", join(root, "nobody.sock")]);
    expect(code).toBe(2);
    expect(stderr).toContain("unknown flag --csi-sock");
  });

  test("exits 1 when nothing answers, within the timeout", async () => {
    const { code, stderr } = await runBinary([
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
