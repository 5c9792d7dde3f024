// A caller cannot forge log lines: control bytes in a request's strings reach neither the text
// nor the JSON log raw, and the call is still one line.
import { expect, setDefaultTimeout, test } from "bun:test";
import { join } from "node:path";
import { status } from "@grpc/grpc-js";
import { assertPrivateMountNamespace, clients } from "../../helpers/driver.ts";
import { podVolume, publishRequest } from "../../helpers/kubelet.ts";
import { rawControl } from "../../helpers/logs.ts";
import { rpcFailure } from "../../helpers/rpc.ts";
import { testbed } from "../../helpers/testbed.ts";

assertPrivateMountNamespace();
// Generous for a loaded machine: covers every test and hook of this file.
setDefaultTimeout(120_000);

const bed = testbed("logs", { agent: false });
const { root } = bed;

// A fake ERROR line after a cleared terminal line, a window title (OSC), a bell, NUL, DEL, C1
// controls (NEL, CSI) and the Unicode line and paragraph separators.
const FORGED =
  "v\r\x1b[2K2024-01-01T00:00:00.000Z ERROR forged\n\x1b]0;title\x07\0\x7f\u0085\u009b1m\u2028\u2029";

for (const format of ["text", "json"] as const) {
  test(`${format}: a publish with control bytes in its volume_id and target_path is one clean line`, async () => {
    const csiSocketPath = join(root, format, "csi.sock");
    const driver = await bed.start(["--log-level", "debug", "--log-format", format], {
      csiSocketPath,
    });
    const volume = podVolume(bed.kubeletRoot);
    const request = {
      ...publishRequest(volume),
      volumeId: FORGED,
      targetPath: join(volume.volumeDir, FORGED, "mount"),
    };
    const { node } = clients(csiSocketPath);
    const error = await rpcFailure(node.nodePublishVolume(request));
    const { code, stderr } = await driver.stop();
    expect(code).toBe(0);
    // The forged target_path holds a NUL byte: refused before anything touches it.
    expect(error.code).toBe(status.INVALID_ARGUMENT);
    const lines = stderr.split("\n").slice(0, -1);
    for (const line of lines) expect(rawControl(line)).toBeUndefined();
    const rpcLines = lines.filter((line) => line.includes("NodePublishVolume"));
    expect(rpcLines).toHaveLength(1);
    // The call's audit line carries the volume_id too, escaped the same way.
    const auditLines = lines.filter((line) => /\baudit\b/.test(line));
    expect(auditLines).toHaveLength(1);
    expect(lines.filter((line) => line.includes("forged")).sort()).toEqual(
      [...rpcLines, ...auditLines].sort(),
    );
    const line = rpcLines[0] ?? "";
    if (format === "json") {
      const record = JSON.parse(line);
      expect(record.volume_id).toBe(FORGED);
      expect(record.target_path).toBe(request.targetPath);
      expect(line).toContain("\\u0085");
      expect(line).toContain("\\u2028");
    } else {
      expect(line).toMatch(/^\S+Z ERROR rpc method=NodePublishVolume volume_id="v\\x0d\\x1b\[2K/);
      expect(line).toContain("\\x0a\\x1b]0;title\\x07\\x00\\x7f\\x85\\x9b1m\\u{2028}\\u{2029}");
    }
  }, 30_000);
}
