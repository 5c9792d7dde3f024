/** The exit status of a driver that stops in order to be started again (sysexits' EX_TEMPFAIL). */
export const EXIT_RESTART = 75;

/**
 * A restart the driver asks of whatever runs it (the container runtime, systemd), for a problem
 * only a new process can repair. The first request counts; it is due at once, or, for a process
 * that has run less than `backoffMs`, once it has run that long: however often the problem comes
 * back, the driver restarts itself at most once per `backoffMs`, with no state kept between runs.
 */
export class SelfRestart {
  private reason: string | undefined;
  private readonly due: Promise<string>;
  private resolveDue: (reason: string) => void = () => {};

  constructor(
    private readonly backoffMs: number,
    /** How long this process has run. */
    private readonly uptimeMs: () => number = () => performance.now(),
  ) {
    this.due = new Promise((resolve) => {
      this.resolveDue = resolve;
    });
  }

  /** Why a restart is on its way, or undefined: meanwhile the driver is not ready. */
  get pending(): string | undefined {
    return this.reason;
  }

  /** Asks for a restart; returns how long until it is due, or undefined if one was asked already. */
  request(reason: string): number | undefined {
    if (this.reason !== undefined) return undefined;
    this.reason = reason;
    const inMs = Math.max(0, Math.ceil(this.backoffMs - this.uptimeMs()));
    setTimeout(() => this.resolveDue(reason), inMs);
    return inMs;
  }

  /** Resolves, with the reason, once a requested restart is due. */
  whenDue(): Promise<string> {
    return this.due;
  }
}
