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
 * Until `dispose`: the first SIGINT or SIGTERM aborts `signal`, prints `first` and sets exit code
 * 130 (the command then stops what it started); the second prints `second` and exits 130 at once,
 * or, given `onSecond`, calls it instead (each later signal too) and leaves the exit to the command.
 */
export function onInterrupt(first: string, second: string, onSecond?: () => void): Interrupt {
  const ac = new AbortController();
  const interrupted = new Promise<never>((_, reject) =>
    ac.signal.addEventListener("abort", () => reject(new Interrupted()), { once: true }),
  );
  // Nobody may be racing it when the signal comes.
  interrupted.catch(() => undefined);
  const handler = (): void => {
    if (!ac.signal.aborted) {
      // Past a progress line redrawn in place on the terminal (stdout or stderr).
      console.error(`${process.stdout.isTTY || process.stderr.isTTY ? "\n" : ""}${first}`);
      process.exitCode = 130;
      ac.abort();
      return;
    }
    console.error(second);
    if (onSecond) onSecond();
    else process.exit(130);
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
