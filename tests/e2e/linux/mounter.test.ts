// A hung `mount` is killed with everything it started: the driver runs `mount` and `umount` in a
// process group of their own and kills the whole group when --mount-timeout runs out.
import { afterAll, expect, setDefaultTimeout, test } from "bun:test";
import {
  chmodSync,
  existsSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from "node:fs";
import { join } from "node:path";
import { status } from "@grpc/grpc-js";
import {
  assertPrivateMountNamespace,
  clients,
  startDriver,
  tempDir,
} from "../../helpers/driver.ts";
import { podVolume, prepareVolume, publishRequest } from "../../helpers/kubelet.ts";
import { rpcFailure } from "../../helpers/rpc.ts";
import { waitFor } from "../../helpers/wait.ts";

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

test("a failing mount's children are killed too, and nothing of it stays open in the driver", async () => {
  const socketDir = join(root, "agent-2");
  mkdirSync(socketDir);
  const bin = join(root, "bin-failing");
  mkdirSync(bin);
  const pidFile = join(root, "failing-children.pid");
  // A `mount` that leaves a helper behind, holding its stderr, and fails.
  writeFileSync(
    join(bin, "mount"),
    `#!/bin/sh\n(sleep 600 &\necho $! >> ${pidFile})\necho 'mount: failed' >&2\nexit 32\n`,
  );
  chmodSync(join(bin, "mount"), 0o755);
  const csiSocketPath = join(root, "plugin-2", "csi.sock");
  const driver = await startDriver({
    workloadApiSocketDir: socketDir,
    csiSocketPath,
    env: { PATH: `${bin}:${process.env.PATH}` },
  });
  const { node } = clients(csiSocketPath);
  const openFiles = () => readdirSync(`/proc/${driver.proc.pid}/fd`).length;
  try {
    const attempt = async () => {
      const volume = podVolume(join(root, "kubelet-2"));
      prepareVolume(volume);
      const error = await rpcFailure(node.nodePublishVolume(publishRequest(volume)));
      expect(error.code).toBe(status.INTERNAL);
      expect(error.details).toContain("mount: failed");
    };
    await attempt();
    const before = openFiles();
    for (let i = 0; i < 20; i++) await attempt();
    const children = readFileSync(pidFile, "utf8").trim().split("\n").map(Number);
    expect(children).toHaveLength(21);
    await waitFor("every helper a failed mount left to die", () => !children.some(alive));
    // One pipe per call would be 20 more.
    expect(openFiles() - before).toBeLessThan(5);
  } finally {
    node.close();
    await driver.stop();
  }
});
