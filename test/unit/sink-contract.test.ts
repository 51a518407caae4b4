/** The sink contract suite (`test/kit/sink-contract.ts`) against every `Sink` implementation. */
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { DiscardSink } from "../../shared/adapters/sink/discard-sink.js";
import { MemorySink } from "../../shared/adapters/sink/memory-sink.js";
import { SqliteSinkInspector } from "../../shared/adapters/sink/sqlite-inspector.js";
import { SqliteSink } from "../../shared/adapters/sink/sqlite-sink.js";
import { sinkContract } from "../kit/sink-contract.js";

{
  let sink: MemorySink | null = null;
  sinkContract("MemorySink", {
    dedupes: true,
    audits: true,
    open: async () => {
      sink = new MemorySink();
      return sink;
    },
    again: async () => sink!,
    inspector: async () => sink,
    cleanUp: async () => {
      sink = null;
    },
  });
}

{
  let dir = "";
  const inspectors: SqliteSinkInspector[] = [];
  const file = (): string => path.join(dir, "sink.db");
  sinkContract("SqliteSink", {
    dedupes: true,
    audits: true,
    open: async () => {
      dir = fs.mkdtempSync(path.join(os.tmpdir(), "sluice-contract-"));
      return new SqliteSink(file(), { pipelines: ["demo"] });
    },
    again: async () => new SqliteSink(file(), { pipelines: ["demo"] }),
    inspector: async () => {
      const i = new SqliteSinkInspector(file());
      inspectors.push(i);
      return i;
    },
    cleanUp: async () => {
      for (const i of inspectors.splice(0)) await i.close();
      if (dir) fs.rmSync(dir, { recursive: true, force: true });
      dir = "";
    },
  });
}

{
  let sink: DiscardSink | null = null;
  sinkContract("DiscardSink", {
    open: async () => {
      sink = new DiscardSink();
      return sink;
    },
    again: async () => sink!,
    inspector: async () => null,
    cleanUp: async () => {
      sink = null;
    },
  });
}
