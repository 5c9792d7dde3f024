import { dlopen, FFIType, read } from "bun:ffi";

/**
 * The glibc calls the driver makes through bun:ffi, for what node:fs cannot ask: statx with
 * flags and fields of its own, statmount (through syscall), openat on a held directory, poll.
 * Pointers are passed as the numbers `ptr()` gives.
 */
export interface Libc {
  statx(fd: number, path: number, flags: number, mask: number, buffer: number): number;
  syscall(number: bigint, a: number, b: number, c: bigint, d: bigint): bigint;
  openat(dirFd: number, path: number, flags: number, mode: number): number;
  poll(fds: number, count: number, timeout: number): number;
  /** The errno the failed call left: read at once, before anything else can change it. */
  errno(): number;
}

let symbols: Libc | undefined | null;

/** glibc's calls, opened on first use; null where they cannot be (no bun:ffi, no glibc). */
export function libc(): Libc | null {
  if (symbols === undefined) {
    try {
      const { symbols: found } = dlopen("libc.so.6", {
        statx: {
          args: [FFIType.i32, FFIType.ptr, FFIType.i32, FFIType.u32, FFIType.ptr],
          returns: FFIType.i32,
        },
        syscall: {
          args: [FFIType.i64, FFIType.ptr, FFIType.ptr, FFIType.u64, FFIType.u64],
          returns: FFIType.i64,
        },
        openat: {
          args: [FFIType.i32, FFIType.ptr, FFIType.i32, FFIType.u32],
          returns: FFIType.i32,
        },
        poll: { args: [FFIType.ptr, FFIType.u64, FFIType.i32], returns: FFIType.i32 },
        __errno_location: { args: [], returns: FFIType.ptr },
      });
      symbols = {
        statx: found.statx as unknown as Libc["statx"],
        syscall: found.syscall as unknown as Libc["syscall"],
        openat: found.openat as unknown as Libc["openat"],
        poll: found.poll as unknown as Libc["poll"],
        errno: () => {
          const location = found.__errno_location();
          return location === null ? 0 : read.i32(location, 0);
        },
      };
    } catch {
      symbols = null;
    }
  }
  return symbols;
}
