/** What a failed JetStream call says, as sluice's adapters read it. */
import { JetStreamApiError } from "@nats-io/jetstream";
import { ErrorCode, SluiceError } from "../../contract/errors.js";

/**
 * The JetStream API error code of `err` (`10037`: no message found, `10071`: wrong last
 * sequence, ...), also from an error that carries the API's reply rather than being a
 * `JetStreamApiError`; undefined for anything else.
 */
export function apiCode(err: unknown): number | undefined {
  if (err instanceof JetStreamApiError) return err.code;
  const e = err as { api_error?: { err_code?: number }; code?: number };
  return e?.api_error?.err_code ?? (typeof e?.code === "number" ? e.code : undefined);
}

/** A failed call to the cluster, as a retryable `UNAVAILABLE` naming what was tried. */
export function unavailable(what: string, cause: unknown): SluiceError {
  return new SluiceError(ErrorCode.Unavailable, `${what}: ${(cause as Error)?.message ?? String(cause)}`, {
    retryable: true,
    cause,
  });
}
