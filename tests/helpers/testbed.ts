import { afterAll, expect } from "bun:test";
import { mkdirSync, rmSync } from "node:fs";
import { join } from "node:path";
import { startAgent } from "./agent.ts";
import { tempDir } from "./driver.ts";
import { mountsUnder } from "./kubelet.ts";

/**
 * A test file's directories and a running stand-in for the SPIFFE agent: the agent's socket
 * directory, a kubelet root and a CSI socket path, all removed after the file's tests.
 */
export function testbed(prefix: string) {
  const root = tempDir(prefix);
  const socketDir = join(root, "agent-sockets");
  mkdirSync(socketDir);
  const bed = {
    root,
    socketDir,
    kubeletRoot: join(root, "kubelet"),
    csiSocketPath: join(root, "plugin", "csi.sock"),
    agent: startAgent(socketDir),
  };
  afterAll(() => {
    bed.agent.stop(true);
    // Never delete through a mount: a test that left one fails here, and its files stay.
    expect(mountsUnder(root)).toBe(0);
    rmSync(root, { recursive: true, force: true });
  }, 60_000);
  return bed;
}
