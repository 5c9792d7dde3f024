import { dlopen, FFIType, read } from "bun:ffi";
import { getSystemErrorMessage, getSystemErrorName } from "node:util";

/**
 * The SELinux label of a file: its `security.selinux` extended attribute, read and written with
 * glibc's lgetxattr/lsetxattr. The `l` variants act on a symbolic link itself, never on what it
 * points to. Each is one system call (about 2 µs from here), where spawning `chcon` costs a
 * process and would need the program and its libraries in the image.
 */

const ATTRIBUTE = Buffer.from("security.selinux\0");
// The kernel's limit for one extended attribute's value is 64 KiB; a context is far shorter.
const MAX_LABEL = 4096;
const ENODATA = "ENODATA";

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
    __errno_location: { args: [], returns: FFIType.ptr },
  }).symbols;
}

/** glibc, opened on first use: a driver that never labels never loads it. */
function symbols(): Libc {
  libc ??= openLibc();
  return libc;
}

const cString = (text: string) => Buffer.from(`${text}\0`);

/** The errno the failed call left, read at once, before anything else can change it. */
function failure(call: string, path: string): XattrError {
  const location = symbols().__errno_location();
  const errno = location === null ? 0 : read.i32(location, 0);
  const code = errno > 0 ? getSystemErrorName(-errno) : "EUNKNOWN";
  const reason = errno > 0 ? getSystemErrorMessage(-errno) : "unknown error";
  return new XattrError(code, `${call} ${JSON.stringify(path)}: ${code} (${reason})`);
}

// Reused for every read: calls are synchronous, so one buffer never serves two at once.
const labelBuffer = Buffer.alloc(MAX_LABEL);

/** The file's SELinux label, or undefined when it has none (ENODATA). */
export function getLabel(path: string): string | undefined {
  const length = Number(
    symbols().lgetxattr(cString(path), ATTRIBUTE, labelBuffer, BigInt(MAX_LABEL)),
  );
  if (length < 0) {
    const error = failure("lgetxattr security.selinux", path);
    if (error.code === ENODATA) return undefined;
    throw error;
  }
  // The label is stored NUL-terminated, as libselinux writes it.
  let end = length;
  while (end > 0 && labelBuffer[end - 1] === 0) end--;
  return labelBuffer.toString("utf8", 0, end);
}

/** Sets the file's SELinux label. */
export function setLabel(path: string, label: string): void {
  const value = cString(label);
  if (symbols().lsetxattr(cString(path), ATTRIBUTE, value, BigInt(value.length), 0) !== 0) {
    throw failure("lsetxattr security.selinux", path);
  }
}
