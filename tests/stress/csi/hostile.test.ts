// Hostile input to every method: random bytes, truncated and oversized messages, and well-formed
// messages with hostile fields. The driver stays up, answers every call with a status, and mounts
// or unmounts nothing.
import { expect, test } from "bun:test";
import { mkdirSync, readFileSync, symlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { create, type DescMessage, type MessageInitShape, toBinary } from "@bufbuild/protobuf";
import { Client, credentials, status } from "@grpc/grpc-js";
import {
  Controller,
  Identity,
  type VolumeCapability_AccessMode_Mode as Mode,
  Node,
  NodeGetVolumeStatsRequestSchema,
  NodePublishVolumeRequestSchema,
  NodeUnpublishVolumeRequestSchema,
  type VolumeCapabilitySchema,
} from "../../../src/gen/csi/v1/csi_pb.ts";
import { assertPrivateMountNamespace, clients } from "../../helpers/driver.ts";
import { podVolume, prepareVolume, publishRequest } from "../../helpers/kubelet.ts";
import { testbed } from "../../helpers/testbed.ts";
import { PATIENCE_MS } from "../../helpers/wait.ts";

assertPrivateMountNamespace();

const PER_METHOD = 10_000;
const OVERSIZED_PER_METHOD = 5;
const CONCURRENCY = 64;
// The driver's answer to none of these may be a crash, a hang or an internal error.
const FORBIDDEN = new Set([
  status.INTERNAL,
  status.UNKNOWN,
  status.DEADLINE_EXCEEDED,
  status.UNAVAILABLE,
]);

const bed = testbed("hostile");
const { root, kubeletRoot, csiSocketPath } = bed;

let foreignTarget = "";
bed.beforeCleanup(() => {
  if (foreignTarget) Bun.spawnSync(["umount", foreignTarget]);
});

function mountTable(): string[] {
  // Mount ids and parents, device, root, mount point: every mount as it is.
  return readFileSync("/proc/self/mountinfo", "utf8")
    .trim()
    .split("\n")
    .map((line) => line.split(" ").slice(0, 5).join(" "))
    .sort();
}

const pick = <T>(items: readonly T[]): T => items[Math.floor(Math.random() * items.length)] as T;
const randomBytes = (max: number) =>
  crypto.getRandomValues(new Uint8Array(Math.floor(Math.random() * max)));
const MEGABYTE = "x".repeat(1 << 20);
/** Mostly short hostile strings; now and then a megabyte one. */
const hostileString = () =>
  pick(["", "v", "id\0nul", "../../etc", "\u202e\ud800", "x".repeat(5000)]);

/** Paths a hostile or broken caller might send; none of them may be mounted on or unmounted. */
function hostilePaths(): string[] {
  // A pod directory that is a symbolic link to somewhere else.
  const linked = podVolume(kubeletRoot);
  const outside = join(root, "outside");
  mkdirSync(join(outside, "volumes", "kubernetes.io~csi", linked.volumeName), { recursive: true });
  mkdirSync(join(kubeletRoot, "pods"), { recursive: true });
  symlinkSync(outside, join(kubeletRoot, "pods", linked.podUid));
  // Another driver's volume, mounted.
  const foreign = podVolume(kubeletRoot);
  prepareVolume(foreign);
  writeFileSync(
    join(foreign.volumeDir, "vol_data.json"),
    JSON.stringify({ driverName: "other.example.com", volumeHandle: foreign.volumeId }),
  );
  mkdirSync(foreign.targetPath);
  expect(Bun.spawnSync(["mount", "-t", "tmpfs", "foreign", foreign.targetPath]).exitCode).toBe(0);
  foreignTarget = foreign.targetPath;
  const real = podVolume(kubeletRoot).targetPath;
  return [
    "",
    "/",
    "/dev/shm",
    "/etc",
    "/proc/self",
    "some/path",
    "../../../etc",
    `${real}/../../../../../../etc/mount`,
    `${real}\0/etc`,
    `${real}/`,
    `/tmp/${"a/".repeat(3000)}mount`,
    `/${"x".repeat(5000)}`,
    `${real.slice(0, -"mount".length)}${"x".repeat(5000)}/mount`,
    join(outside, "volumes", "kubernetes.io~csi", linked.volumeName, "mount"),
    linked.targetPath,
    foreign.targetPath,
    real,
    "/var/lib/kubelet/pods/x/volumes/kubernetes.io~csi/v/mount",
    "/tmp/pods/x/volumes/kubernetes.io~empty-dir/v/mount",
    "/\u202e\ufffd\ud800/pods/x/volumes/kubernetes.io~csi/v/mount",
  ];
}

test(`${PER_METHOD.toLocaleString("en")} hostile requests to every method`, async () => {
  const before = mountTable();
  const paths = hostilePaths();
  const mountsWithFixtures = mountTable();
  const driver = await bed.start();
  const raw = new Client(`unix://${csiSocketPath}`, credentials.createInsecure());

  const publishVariants = (): MessageInitShape<typeof NodePublishVolumeRequestSchema> => {
    const valid = publishRequest(podVolume(kubeletRoot));
    const modes = [0, 1, 2, 3, 4, 5, 6, 7, 8, 99] as Mode[];
    return {
      volumeId: pick([valid.volumeId, hostileString()]),
      targetPath: pick(paths),
      volumeCapability: pick<MessageInitShape<typeof VolumeCapabilitySchema> | undefined>([
        undefined,
        { accessType: { case: "block", value: {} }, accessMode: { mode: pick(modes) } },
        {
          accessType: { case: "mount", value: { fsType: pick(["", "ext4", hostileString()]) } },
          accessMode: { mode: pick(modes) },
        },
        {
          accessType: { case: "mount", value: { mountFlags: ["rw", "suid", hostileString()] } },
          accessMode: { mode: pick(modes) },
        },
        { accessType: { case: "mount", value: {} } },
        { accessMode: { mode: pick(modes) } },
      ]),
      readonly: Math.random() < 0.7,
      volumeContext: pick([
        valid.volumeContext,
        {
          ...valid.volumeContext,
          "csi.storage.k8s.io/ephemeral": pick(["false", "TRUE", hostileString()]),
        },
        { ...valid.volumeContext, unknown: "x", [hostileString()]: hostileString() },
        {},
      ]),
      secrets: pick<Record<string, string>>([{}, { token: hostileString() }]),
      publishContext: pick<Record<string, string>>([{}, { a: "b" }]),
      stagingTargetPath: pick(["", "/", hostileString()]),
    };
  };

  const methods: { path: string; schema: DescMessage; hostile?: () => Uint8Array }[] = [
    ...[Identity, Controller, Node].flatMap((service) =>
      service.methods.map((method) => ({
        path: `/${service.typeName}/${method.name}`,
        schema: method.input,
      })),
    ),
  ];
  const encoded = <S extends DescMessage>(schema: S, init: MessageInitShape<S>) =>
    toBinary(schema, create(schema, init));
  for (const method of methods) {
    if (method.path.endsWith("NodePublishVolume")) {
      method.hostile = () => encoded(NodePublishVolumeRequestSchema, publishVariants());
    } else if (method.path.endsWith("NodeUnpublishVolume")) {
      method.hostile = () =>
        encoded(NodeUnpublishVolumeRequestSchema, {
          volumeId: hostileString(),
          targetPath: pick(paths),
        });
    } else if (method.path.endsWith("NodeGetVolumeStats")) {
      method.hostile = () =>
        encoded(NodeGetVolumeStatsRequestSchema, {
          volumeId: hostileString(),
          volumePath: pick(paths),
        });
    }
  }

  /** One hostile message for a method: i picks the kind. */
  function message(method: (typeof methods)[number], i: number): Uint8Array {
    const wellFormed = method.hostile?.() ?? toBinary(method.schema, create(method.schema));
    if (i % 500 === 499) {
      // A megabyte string in field 1 (volume_id in the Node requests) or 2 (target_path/volume_path).
      const field = new TextEncoder().encode(MEGABYTE);
      const length = [
        0x80 | (field.length & 0x7f),
        0x80 | ((field.length >> 7) & 0x7f),
        field.length >> 14,
      ];
      return new Uint8Array([
        ...wellFormed,
        ((i % 1000 < 500 ? 1 : 2) << 3) | 2,
        ...length,
        ...field,
      ]);
    }
    switch (i % 5) {
      case 0:
        return randomBytes(512);
      case 1:
        // Truncated: a valid message cut short.
        return wellFormed.slice(0, Math.floor(Math.random() * wellFormed.length));
      case 2:
        // A string field (numbers 1..4) holding bytes that are not UTF-8.
        return new Uint8Array([((1 + (i % 4)) << 3) | 2, 4, 0xff, 0xfe, 0xc0, 0x80]);
      case 3:
        // Valid, followed by unknown fields and garbage.
        return new Uint8Array([...wellFormed, ...randomBytes(64)]);
      default:
        return wellFormed;
    }
  }

  const codes = new Map<string, Map<string, number>>();
  const forbidden: string[] = [];
  let calls = 0;

  function send(path: string, bytes: Uint8Array): Promise<void> {
    return new Promise((resolve) => {
      raw.makeUnaryRequest(
        path,
        (b: Buffer) => b,
        (b: Buffer) => b,
        Buffer.from(bytes),
        { deadline: Date.now() + PATIENCE_MS },
        (error) => {
          const code = error?.code ?? status.OK;
          const byMethod = codes.get(path) ?? new Map<string, number>();
          byMethod.set(
            status[code] ?? String(code),
            (byMethod.get(status[code] ?? String(code)) ?? 0) + 1,
          );
          codes.set(path, byMethod);
          if (FORBIDDEN.has(code)) forbidden.push(`${path}: ${status[code]} ${error?.details}`);
          calls++;
          resolve();
        },
      );
    });
  }

  const started = performance.now();
  for (const method of methods) {
    let next = 0;
    await Promise.all(
      Array.from({ length: CONCURRENCY }, async () => {
        while (next < PER_METHOD) await send(method.path, message(method, next++));
      }),
    );
    // Oversized: past the 4 MiB receive limit.
    for (let i = 0; i < OVERSIZED_PER_METHOD; i++) await send(method.path, new Uint8Array(5 << 20));
  }
  const seconds = (performance.now() - started) / 1000;

  // Still serving, same process.
  expect(driver.proc.exitCode).toBeNull();
  expect((await clients(csiSocketPath).identity.probe({})).ready).toBe(true);
  raw.close();
  const { stderr } = await driver.stop();

  const summary = [...codes].map(
    ([path, byCode]) =>
      `${path.split("/").pop()}: ${[...byCode].map(([code, n]) => `${code} ${n}`).join(", ")}`,
  );
  console.log(
    `hostile: ${calls} calls in ${seconds.toFixed(1)} s, ${forbidden.length} answered with a forbidden code\n  ${summary.join("\n  ")}`,
  );

  expect(forbidden.slice(0, 5)).toEqual([]);
  expect(stderr).not.toContain("code=INTERNAL");
  // Nothing was mounted or unmounted: `/`, `/dev/shm` and another driver's volume are all still there.
  expect(mountTable()).toEqual(mountsWithFixtures);
  expect(mountsWithFixtures.length).toBe(before.length + 1);
}, 600_000);
