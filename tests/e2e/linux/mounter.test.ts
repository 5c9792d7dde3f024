// A hung `mount` is killed with everything it started: the driver runs `mount` and `umount` in a
// process group of their own and kills the whole group when --mount-timeout runs out.
import { expect, setDefaultTimeout, test } from "bun:test";
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { status } from "@grpc/grpc-js";
import { assertPrivateMountNamespace, clients } from "../../helpers/driver.ts";
import { publishRequest } from "../../helpers/kubelet.ts";
import { rpcFailure } from "../../helpers/rpc.ts";
import { testbed } from "../../helpers/testbed.ts";
import { waitFor } from "../../helpers/wait.ts";

assertPrivateMountNamespace();
// Generous for a loaded machine: covers every test and hook of this file.
setDefaultTimeout(120_000);

const bed = testbed("children", { agent: false });
const { root } = bed;

function alive(pid: number): boolean {
  try {
    // A zombie is dead too: only its parent's wait is missing.
    return !/^State:\s+Z/m.test(readFileSync(`/proc/${pid}/status`, "utf8"));
  } catch {
    return false;
  }
}

test("a hung mount's own children are killed with it after --mount-timeout", async () => {
  const pidFile = join(root, "grandchild.pid");
  // A `mount` that starts a helper of its own, then hangs.
  const PATH = bed.standIn("mount", `sleep 600 &\necho $! > ${pidFile}\nexec sleep 600`);
  const csiSocketPath = join(root, "plugin", "csi.sock");
  const driver = await bed.start(["--mount-timeout", "1"], { csiSocketPath, env: { PATH } });
  const { node } = clients(csiSocketPath);
  try {
    const volume = bed.volume();
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
  const pidFile = join(root, "failing-children.pid");
  // A `mount` that leaves a helper behind, holding its stderr, and fails.
  const PATH = bed.standIn(
    "mount",
    `(sleep 600 &\necho $! >> ${pidFile})\necho 'mount: failed' >&2\nexit 32`,
  );
  const csiSocketPath = join(root, "plugin-2", "csi.sock");
  const driver = await bed.start([], { csiSocketPath, env: { PATH } });
  const { node } = clients(csiSocketPath);
  const openFiles = () => readdirSync(`/proc/${driver.proc.pid}/fd`).length;
  try {
    const attempt = async () => {
      const volume = bed.volume();
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
