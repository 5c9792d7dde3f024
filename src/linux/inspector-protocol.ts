// What the inspector's parent (./inspector.ts) and its child (./inspector-child.ts) say to each
// other: one line of JSON per message, over the child's stdin and stdout.

/** How often a child working on a request says so. */
export const PROGRESS_MS = 250;

/**
 * The longest answer a child sends: operations answer counts and short lists, never what they
 * read, so that nothing large is parsed on the driver's event loop. A longer one is a bug in the
 * operation, answered as an error.
 */
export const MAX_ANSWER = 256 * 1024;

/**
 * A table of operations, each taking one JSON argument. An operation returns a JSON value, a
 * promise of one, or a generator (sync or async) that returns one: a long loop of system calls
 * yields between them, so that the child's runtime can say that it progresses (see
 * ./inspector-child.ts). A thrown error reaches the caller with its errno's code.
 */
// biome-ignore lint/suspicious/noExplicitAny: each operation declares its own argument type.
export type Operations = Record<string, (args: any) => unknown>;

export type Args<Ops extends Operations, K extends keyof Ops> = Parameters<Ops[K]>[0];

/** What an operation's caller gets: what it returns, once awaited or run to its end. */
export type Result<Ops extends Operations, K extends keyof Ops> = Outcome<ReturnType<Ops[K]>>;

type Outcome<R> =
  R extends Generator<unknown, infer T, undefined>
    ? T
    : R extends AsyncGenerator<unknown, infer T, undefined>
      ? T
      : Awaited<R>;

export interface Request {
  id: number;
  op: string;
  args: unknown;
}

export type Answer =
  | { id: number; ok: true; value: unknown }
  | { id: number; ok: false; error: string; code?: string }
  | { progress: true };
