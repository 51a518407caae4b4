/**
 * Dead letters in the pipeline's `SLUICE_DLQ_<P>` stream, subject `sluice.dlq.<P>.<shard>`:
 * the original bytes and headers plus the error code, message, source subject and sequence.
 * The message id `dlq-<shard>-<seq>` makes a re-publish after a crash a no-op.
 */
import { type JetStreamClient, jetstream } from "@nats-io/jetstream";
import { type NatsConnection, headers as natsHeaders } from "@nats-io/transport-node";
import type { DeadLetter, DeadLetterQueue } from "../../contract/ports.js";
import { deadLetterSubject, Headers } from "../../contract/wire.js";

export class JetStreamDeadLetterQueue implements DeadLetterQueue {
  private readonly js: JetStreamClient;

  constructor(nc: NatsConnection) {
    this.js = jetstream(nc, { timeout: 5_000 });
  }

  async publish(entries: DeadLetter[]): Promise<void> {
    await Promise.all(
      entries.map((d) => {
        const h = natsHeaders();
        for (const [k, v] of Object.entries(d.headers)) {
          if (k !== Headers.msgId) h.set(k, v);
        }
        const originalId = d.headers[Headers.msgId];
        if (originalId) h.set(Headers.originalMsgId, originalId);
        h.set(Headers.errorCode, d.code);
        if (d.stage) h.set(Headers.errorStage, d.stage);
        h.set(Headers.errorMessage, d.message.replace(/[\r\n]/g, " ").slice(0, 512));
        h.set(Headers.sourceSubject, d.subject);
        h.set(Headers.sourceSeq, String(d.seq));
        h.set(Headers.shard, String(d.ref.shard));
        return this.js.publish(deadLetterSubject(d.ref.pipeline, d.ref.shard), d.data, {
          headers: h,
          msgID: `dlq-${d.ref.shard}-${d.seq}`,
        });
      }),
    );
  }
}
