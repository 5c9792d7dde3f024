// A minimal FUSE file system, spoken over /dev/fuse with no library: an empty root directory
// that answers at first and, told to on stdin, stops answering. What a hung FUSE server (a
// deadlocked SPIFFEFS, say) looks like to whoever calls into it.
//
//   bun tests/helpers/fuse-server.ts <mount point> [ro|rw] [no-labels|no-xattrs] [owner=UID] [ino=N]
//
// Mounts with `mount -i -t fuse -o fd=3,...` (the descriptor of /dev/fuse passed as fd 3 to
// mount; -i: no /sbin/mount.fuse helper), prints "mounted" once the kernel's INIT is answered,
// then reads commands, a line each, on stdin:
//   hang    read every request from now on and answer none: callers wait in the kernel (a
//           request read from /dev/fuse and never answered cannot even be killed) until this
//           process ends, which aborts the connection and fails them all with ENOTCONN
//   answer  answer again, the requests held meanwhile first
//   counts  print "counts <JSON>": how many requests of each opcode came, by number
// Extended attributes: with no-labels (the default), every file has none (ENODATA, asked again
// each time); with no-xattrs, they are not supported at all (ENOSYS, which the kernel turns into
// ENOTSUP and remembers: it asks no more).
import { closeSync, openSync, read, writeSync } from "node:fs";
import { constants } from "node:os";

// owner=UID: mounted as that user's, without allow_other (fuse.conf's default for users): the
// kernel refuses every other user's access, root's included (EACCES).
// ino=N: the inode number the root's attributes give (1 by default). The kernel takes whatever a
// server says: a stat of the root reports N from then on.
const [mountPoint, access = "rw", xattrs = "no-labels", ...settings] = process.argv.slice(2);
const setting = (name: string) =>
  settings.map((each) => new RegExp(`^${name}=(\\d+)$`).exec(each)?.[1]).find(Boolean);
const ownerUid = setting("owner");
const rootIno = BigInt(setting("ino") ?? 1);
if (
  !mountPoint ||
  (access !== "rw" && access !== "ro") ||
  (xattrs !== "no-labels" && xattrs !== "no-xattrs") ||
  settings.some((each) => !/^(owner|ino)=\d+$/.test(each))
) {
  process.stderr.write(
    "usage: fuse-server.ts <mount point> [ro|rw] [no-labels|no-xattrs] [owner=UID] [ino=N]\n",
  );
  process.exit(2);
}

// Opcodes and sizes from the kernel's include/uapi/linux/fuse.h.
const Op = {
  LOOKUP: 1,
  FORGET: 2,
  GETATTR: 3,
  GETXATTR: 22,
  LISTXATTR: 23,
  STATFS: 17,
  RELEASE: 18,
  INIT: 26,
  OPENDIR: 27,
  READDIR: 28,
  RELEASEDIR: 29,
  ACCESS: 34,
  INTERRUPT: 36,
  DESTROY: 38,
  BATCH_FORGET: 42,
  READDIRPLUS: 44,
} as const;
const IN_HEADER = 40;
const OUT_HEADER = 16;
// The kernel refuses reads into a buffer smaller than FUSE_MIN_READ_BUFFER.
const READ_BUFFER = 1 << 17;
const ROOT_ID = 1n;
const ATTR_SIZE = 88;

const device = openSync("/dev/fuse", "r+");
let hanging = false;
const counts: Record<number, number> = {};
// Requests read while hanging, answered once told to answer again.
let held: Buffer[] = [];

const mount = Bun.spawnSync(
  [
    "mount",
    "-i",
    "-t",
    "fuse",
    "-o",
    ownerUid === undefined
      ? `fd=3,rootmode=40000,user_id=0,group_id=0,allow_other,${access}`
      : `fd=3,rootmode=40000,user_id=${ownerUid},group_id=${ownerUid},${access}`,
    "stuck-fuse",
    mountPoint,
  ],
  { stdio: ["ignore", "inherit", "pipe", device] },
);
if (mount.exitCode !== 0) {
  process.stderr.write(`mount failed: ${mount.stderr.toString()}`);
  process.exit(1);
}

function reply(unique: bigint, error: number, body?: Buffer): void {
  const out = Buffer.alloc(OUT_HEADER + (body?.length ?? 0));
  out.writeUInt32LE(out.length, 0);
  out.writeInt32LE(-error, 4);
  out.writeBigUInt64LE(unique, 8);
  body?.copy(out, OUT_HEADER);
  try {
    writeSync(device, out);
  } catch {
    // ENOENT: the caller gave up (interrupted) meanwhile; nothing to answer.
  }
}

/** The root directory's attributes (fuse_attr_out), valid for no time: every stat asks again. */
function rootAttributes(): Buffer {
  const out = Buffer.alloc(16 + ATTR_SIZE);
  const attr = 16;
  out.writeBigUInt64LE(rootIno, attr);
  const now = BigInt(Math.floor(Date.now() / 1000));
  for (const offset of [32, 40, 48]) out.writeBigUInt64LE(now, attr + offset);
  out.writeUInt32LE(0o040755, attr + 60);
  out.writeUInt32LE(2, attr + 64);
  out.writeUInt32LE(4096, attr + 80);
  return out;
}

function initReply(request: Buffer): Buffer {
  const minor = Math.min(request.readUInt32LE(IN_HEADER + 4), 31);
  const out = Buffer.alloc(64);
  out.writeUInt32LE(7, 0);
  out.writeUInt32LE(minor, 4);
  out.writeUInt16LE(1, 16);
  out.writeUInt16LE(1, 18);
  out.writeUInt32LE(4096, 20);
  out.writeUInt32LE(1, 24);
  return out;
}

function statfsReply(): Buffer {
  const out = Buffer.alloc(80);
  out.writeUInt32LE(4096, 40);
  out.writeUInt32LE(255, 44);
  return out;
}

/** The answer to a request: an errno (0 for success) and a body; undefined for none at all. */
function answerTo(
  opcode: number,
  nodeId: bigint,
  request: Buffer,
): { error: number; body?: Buffer } | undefined {
  const { ENODATA, ENOENT, ENOSYS } = constants.errno;
  switch (opcode) {
    case Op.INIT:
      return { error: 0, body: initReply(request) };
    case Op.FORGET:
    case Op.BATCH_FORGET:
    case Op.INTERRUPT:
      return undefined;
    case Op.GETATTR:
      return nodeId === ROOT_ID ? { error: 0, body: rootAttributes() } : { error: ENOENT };
    case Op.LOOKUP:
      return { error: ENOENT };
    case Op.OPENDIR:
      return { error: 0, body: Buffer.alloc(16) };
    case Op.READDIR:
    case Op.READDIRPLUS:
    case Op.RELEASE:
    case Op.RELEASEDIR:
    case Op.ACCESS:
    case Op.DESTROY:
      return { error: 0 };
    case Op.STATFS:
      return { error: 0, body: statfsReply() };
    case Op.GETXATTR:
      return { error: xattrs === "no-xattrs" ? ENOSYS : ENODATA };
    case Op.LISTXATTR:
      return xattrs === "no-xattrs" ? { error: ENOSYS } : { error: 0, body: Buffer.alloc(8) };
    default:
      // Setting an extended attribute among them: ENOSYS tells the kernel not to ask again.
      return { error: ENOSYS };
  }
}

const buffer = Buffer.alloc(READ_BUFFER);
function handle(request: Buffer): void {
  const opcode = request.readUInt32LE(4);
  counts[opcode] = (counts[opcode] ?? 0) + 1;
  if (hanging && opcode !== Op.INIT) {
    held.push(request);
    return;
  }
  const answer = answerTo(opcode, request.readBigUInt64LE(16), request);
  if (answer) reply(request.readBigUInt64LE(8), answer.error, answer.body);
  if (opcode === Op.INIT) process.stdout.write("mounted\n");
}

function next(): void {
  read(device, buffer, 0, READ_BUFFER, null, (error, length) => {
    if (error) {
      // ENODEV: unmounted. Nothing more will come.
      closeSync(device);
      process.exit(0);
    }
    handle(Buffer.from(buffer.subarray(0, length)));
    next();
  });
}
next();

const decoder = new TextDecoder();
for await (const chunk of Bun.stdin.stream()) {
  for (const command of decoder.decode(chunk).split("\n")) {
    if (command === "hang") hanging = true;
    if (command === "answer") {
      hanging = false;
      const requests = held;
      held = [];
      for (const request of requests) handle(request);
    }
    if (command === "hang" || command === "answer") process.stdout.write(`${command}ing\n`);
    if (command === "counts") process.stdout.write(`counts ${JSON.stringify(counts)}\n`);
  }
}
// The test went away: so does the file system.
process.exit(0);
