import { ErrorCode, SluiceError } from "../../shared/contract/errors.js";

/** Polls `check` every `everyMs` until it returns a value other than undefined, or the deadline passes. */
export async function waitUntil<T>(
  what: string,
  timeoutMs: number,
  check: () => Promise<T | undefined> | T | undefined,
  everyMs = 100,
): Promise<T> {
  const end = Date.now() + timeoutMs;
  let lastErr: unknown;
  for (;;) {
    try {
      const v = await check();
      if (v !== undefined) return v;
    } catch (err) {
      lastErr = err;
    }
    if (Date.now() > end) {
      throw new SluiceError(ErrorCode.Unavailable, `timed out after ${timeoutMs} ms waiting for ${what}`, {
        cause: lastErr,
      });
    }
    await new Promise((r) => setTimeout(r, everyMs));
  }
}
