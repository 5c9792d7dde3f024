// A hung `mount` is killed with everything it started: the driver runs `mount` and `umount` in a
// process group of their own and kills the whole group when --mount-timeout runs out.
import { afterAll, expect, setDefaultTimeout, test } from "bun:test";
import { chmodSync, existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { status } from "@grpc/grpc-js";
import { assertPrivateMountNamespace, clients, startDriver, tempDir } from "../helpers/driver.ts";
import { podVolume, prepareVolume, publishRequest } from "../helpers/kubelet.ts";
import { rpcFailure } from "../helpers/rpc.ts";
import { waitFor } from "../helpers/wait.ts";

assertPrivateMountNamespace();
// Generous for a loaded machine: covers every test and hook of this file.
setDefaultTimeout(120_000);

const root = tempDir("children");
afterAll(() => rmSync(root, { recursive: true, force: true }));

function alive(pid: number): boolean {
  try {
    // A zombie is dead too: only its parent's wait is missing.
    return !/^State:\s+Z/m.test(readFileSync(`/proc/${pid}/status`, "utf8"));
  } catch {
    return false;
  }
}

test("a hung mount's own children are killed with it after --mount-timeout", async () => {
  const socketDir = join(root, "agent");
  mkdirSync(socketDir);
  const bin = join(root, "bin");
  mkdirSync(bin);
  const pidFile = join(root, "grandchild.pid");
  // A `mount` that starts a helper of its own, then hangs.
  writeFileSync(
    join(bin, "mount"),
    `#!/bin/sh\nsleep 600 &\necho $! > ${pidFile}\nexec sleep 600\n`,
  );
  chmodSync(join(bin, "mount"), 0o755);
  const csiSocketPath = join(root, "plugin", "csi.sock");
  const driver = await startDriver({
    workloadApiSocketDir: socketDir,
    csiSocketPath,
    env: { PATH: `${bin}:${process.env.PATH}` },
    args: ["--mount-timeout", "1"],
  });
  const { node } = clients(csiSocketPath);
  try {
    const volume = podVolume(join(root, "kubelet"));
    prepareVolume(volume);
    const error = await rpcFailure(node.nodePublishVolume(publishRequest(volume)));
    expect(error.code).toBe(status.DEADLINE_EXCEEDED);
    expect(existsSync(volume.targetPath)).toBe(false);
    const grandchild = Number(readFileSync(pidFile, "utf8").trim());
    expect(grandchild).toBeGreaterThan(1);
    // SIGKILL is delivered at once, but the kernel may take a moment to reap on a busy machine.
    await waitFor(`the grandchild ${grandchild} to die`, () => !alive(grandchild));
  } finally {
    node.close();
    await driver.stop();
  }
}, 60_000);
