import { dlopen, FFIType, read } from "bun:ffi";
import { constants } from "node:os";
import { getSystemErrorMessage, getSystemErrorName } from "node:util";

/**
 * The SELinux label of a file: its `security.selinux` extended attribute, read and written with
 * glibc's xattr calls. Each is one system call (about 2 µs from here), where spawning `chcon`
 * costs a process and would need the program and its libraries in the image.
 *
 * By path, the `l` variants (lgetxattr, lsetxattr) act on a symbolic link itself, never on what
 * it points to. By descriptor, getxattr/setxattr on `/proc/self/fd/N` act on exactly the file the
 * descriptor holds, even an O_PATH one of a socket or a link (which fgetxattr refuses): the
 * kernel ends that path at the file itself and follows nothing further.
 */

const ATTRIBUTE = Buffer.from("security.selinux\0");
// The kernel's limit for one extended attribute's value is 64 KiB; a context is far shorter.
const MAX_LABEL = 4096;
const { ENODATA } = constants.errno;

/** A failed lgetxattr/lsetxattr, with the errno's name as `code` (like Node's own errors). */
export class XattrError extends Error {
  override name = "XattrError";
  constructor(
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

type Libc = ReturnType<typeof openLibc>;
let libc: Libc | undefined;

function openLibc() {
  return dlopen("libc.so.6", {
    lgetxattr: {
      args: [FFIType.ptr, FFIType.ptr, FFIType.ptr, FFIType.u64],
      returns: FFIType.i64,
    },
    lsetxattr: {
      args: [FFIType.ptr, FFIType.ptr, FFIType.ptr, FFIType.u64, FFIType.i32],
      returns: FFIType.i32,
    },
    getxattr: {
      args: [FFIType.ptr, FFIType.ptr, FFIType.ptr, FFIType.u64],
      returns: FFIType.i64,
    },
    setxattr: {
      args: [FFIType.ptr, FFIType.ptr, FFIType.ptr, FFIType.u64, FFIType.i32],
      returns: FFIType.i32,
    },
    __errno_location: { args: [], returns: FFIType.ptr },
  }).symbols;
}

/** glibc, opened on first use: a driver that never labels never loads it. */
function symbols(): Libc {
  libc ??= openLibc();
  return libc;
}

// Reused for every path: calls are synchronous, so one buffer never serves two at once. A path
// longer than the kernel's PATH_MAX gets a buffer of its own (and ENAMETOOLONG).
const pathBuffer = Buffer.alloc(4097);

/** `text` NUL-terminated, for C. */
function cPath(text: string): Buffer {
  const length = Buffer.byteLength(text);
  if (length >= pathBuffer.length) return Buffer.from(`${text}\0`);
  pathBuffer.write(text, 0);
  pathBuffer[length] = 0;
  return pathBuffer;
}

/** The errno the failed call left, read at once, before anything else can change it. */
function lastErrno(): number {
  const location = symbols().__errno_location();
  return location === null ? 0 : read.i32(location, 0);
}

function failure(call: string, path: string, errno: number): XattrError {
  const code = errno > 0 ? getSystemErrorName(-errno) : "EUNKNOWN";
  const reason = errno > 0 ? getSystemErrorMessage(-errno) : "unknown error";
  return new XattrError(code, `${call} ${JSON.stringify(path)}: ${code} (${reason})`);
}

// Reused for every read: calls are synchronous, so one buffer never serves two at once.
const labelBuffer = Buffer.alloc(MAX_LABEL);

/** The file's SELinux label (the link's own, for a link), or undefined when it has none. */
export function getLabel(path: string): string | undefined {
  return readLabel("lgetxattr", path);
}

/** Sets the file's SELinux label (the link's own, for a link). */
export function setLabel(path: string, label: string): void {
  writeLabel("lsetxattr", path, label);
}

/** The SELinux label of the file open as `fd` (any descriptor, O_PATH too). */
export function fileLabel(fd: number): string | undefined {
  return readLabel("getxattr", `/proc/self/fd/${fd}`);
}

/** Sets the SELinux label of the file open as `fd` (any descriptor, O_PATH too). */
export function setFileLabel(fd: number, label: string): void {
  writeLabel("setxattr", `/proc/self/fd/${fd}`, label);
}

/** The label at `path`, or undefined when there is none (ENODATA). */
function readLabel(call: "lgetxattr" | "getxattr", path: string): string | undefined {
  const length = Number(symbols()[call](cPath(path), ATTRIBUTE, labelBuffer, BigInt(MAX_LABEL)));
  if (length < 0) {
    // No label is common (a file the agent just made): no error is built for it.
    const errno = lastErrno();
    if (errno === ENODATA) return undefined;
    throw failure(`${call} security.selinux`, path, errno);
  }
  // The label is stored NUL-terminated, as libselinux writes it.
  let end = length;
  while (end > 0 && labelBuffer[end - 1] === 0) end--;
  return labelBuffer.toString("utf8", 0, end);
}

function writeLabel(call: "lsetxattr" | "setxattr", path: string, label: string): void {
  const value = Buffer.from(`${label}\0`);
  if (symbols()[call](cPath(path), ATTRIBUTE, value, BigInt(value.length), 0) !== 0) {
    throw failure(`${call} security.selinux`, path, lastErrno());
  }
}
