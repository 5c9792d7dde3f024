/** Whether `error` is a system call's failure with the errno name `code` (ENOENT, EEXIST, ...). */
export function isErrno(error: unknown, code: string): boolean {
  return (error as NodeJS.ErrnoException | undefined)?.code === code;
}
