/**
 * Ctrl-C during a command that starts a cluster. The processes `sluice up` starts are detached
 * (their own process group), so the terminal's SIGINT reaches only the command; without this the
 * command died on it and left every server, worker and database it had started running.
 */

/** Thrown by `Interrupt.guard` once the user interrupted the command. */
export class Interrupted extends Error {
  constructor() {
    super("interrupted");
  }
}

export interface Interrupt {
  /** Aborted by the first SIGINT or SIGTERM. */
  readonly signal: AbortSignal;
  /** `p`, or an `Interrupted` rejection as soon as the command is interrupted. */
  guard<T>(p: Promise<T>): Promise<T>;
  /** Stops listening for the signals. Idempotent. */
  dispose(): void;
}

/**
 * Until `dispose`: the first SIGINT or SIGTERM aborts `signal` and prints `first` (the command then
 * stops what it started and exits 130); the second prints `second` and exits 130 at once.
 */
export function onInterrupt(first: string, second: string): Interrupt {
  const ac = new AbortController();
  const interrupted = new Promise<never>((_, reject) =>
    ac.signal.addEventListener("abort", () => reject(new Interrupted()), { once: true }),
  );
  // Nobody may be racing it when the signal comes.
  interrupted.catch(() => undefined);
  const handler = (): void => {
    if (!ac.signal.aborted) {
      // Past a progress line redrawn in place on the terminal.
      console.error(`${process.stdout.isTTY ? "\n" : ""}${first}`);
      process.exitCode = 130;
      ac.abort();
      return;
    }
    console.error(second);
    process.exit(130);
  };
  process.on("SIGINT", handler);
  process.on("SIGTERM", handler);
  return {
    signal: ac.signal,
    guard: <T>(p: Promise<T>): Promise<T> => Promise.race([p, interrupted]),
    dispose() {
      process.off("SIGINT", handler);
      process.off("SIGTERM", handler);
    },
  };
}
