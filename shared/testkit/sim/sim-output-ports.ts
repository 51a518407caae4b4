/**
 * The JetStream output sink under simulation: the production `OutputStreamSink` in each worker,
 * its stream operations served over `SimNet` by the in-memory output stream on the broker node.
 */
import type { OutputStreamSink } from "../../adapters/sink/output-stream-sink.js";
import { ErrorCode, isSluiceError } from "../../contract/errors.js";
import type { ShardRef } from "../../contract/ownership.js";
import type {
  Checkpoint,
  CommitOptions,
  CommitResult,
  OutputCheckpoint,
  OutputRecord,
  OutputStreamStore,
  Sink,
  SinkRow,
} from "../../contract/ports.js";
import type { MemoryOutputStream } from "../memory-output-stream.js";
import type { SimNode } from "./sim-loop.js";
import type { SimNet } from "./sim-net.js";
import type { FencedTap } from "./sim-ports.js";

const REQUEST_TIMEOUT_MS = 1_000;

export class SimOutputStore implements OutputStreamStore {
  constructor(
    private readonly net: SimNet,
    private readonly self: SimNode,
    private readonly broker: SimNode,
    private readonly stream: MemoryOutputStream,
  ) {}

  lastCheckpoint(ref: ShardRef): Promise<{ checkpoint: Checkpoint; streamSeq: number } | null> {
    return this.net.request(
      this.self,
      this.broker,
      () => this.stream.lastCheckpoint(ref),
      REQUEST_TIMEOUT_MS,
    );
  }

  append(
    ref: ShardRef,
    records: readonly OutputRecord[],
    cp: OutputCheckpoint,
    expectAt: number | undefined,
  ): Promise<{ ok: true; checkpointSeq: number } | { ok: false }> {
    const copy = records.map((r) => ({ ...r, row: { ...r.row } }));
    return this.net.request(
      this.self,
      this.broker,
      () => this.stream.append(ref, copy, { ...cp }, expectAt),
      2 * REQUEST_TIMEOUT_MS,
    );
  }

  recordIds(ref: ShardRef, fromSeq: number): Promise<string[]> {
    return this.net.request(
      this.self,
      this.broker,
      () => this.stream.recordIds(ref, fromSeq),
      REQUEST_TIMEOUT_MS,
    );
  }
}

/**
 * A worker's output-stream sink in the simulator, with the simulator's two taps: a commit the
 * rules refuse as `FENCED` is reported with the time it was sent, and a fault may freeze the
 * node just as a commit leaves it (the zombie write).
 */
export class SimOutputSink implements Sink {
  constructor(
    private readonly inner: OutputStreamSink,
    private readonly self: SimNode,
    private readonly onFenced?: FencedTap,
    private readonly holdNextCommit?: () => boolean,
  ) {}

  fence(ref: ShardRef, epoch: number): Promise<Checkpoint> {
    return this.inner.fence(ref, epoch);
  }

  commit(
    ref: ShardRef,
    epoch: number,
    worker: string,
    rows: SinkRow[],
    lastSeq: number,
    opts?: CommitOptions,
  ): Promise<CommitResult> {
    const sentAt = this.self.loop.now;
    const send = (): Promise<CommitResult> =>
      this.inner.commit(ref, epoch, worker, rows, lastSeq, opts).catch((err: unknown) => {
        if (isSluiceError(err, ErrorCode.Fenced)) this.onFenced?.(sentAt, ref, epoch, worker);
        throw err;
      });
    if (this.holdNextCommit?.()) return new Promise<void>((r) => this.self.setTimeout(r, 0)).then(send);
    return send();
  }

  checkpoint(ref: ShardRef): Promise<Checkpoint> {
    return this.inner.checkpoint(ref);
  }

  recordIds(ref: ShardRef, fromSeq: number): Promise<string[]> {
    return this.inner.recordIds(ref, fromSeq);
  }

  close(): Promise<void> {
    return this.inner.close();
  }
}
