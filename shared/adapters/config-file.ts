/** Reads the cluster config from a file (see `contract/config.ts` for its schema). */
import { readFileSync } from "node:fs";
import { parseConfig, type SluiceConfig } from "../contract/config.js";
import { ErrorCode, SluiceError } from "../contract/errors.js";

/** The config in `path`, or the built-in defaults when there is none. */
export function loadConfigFile(path: string | undefined): SluiceConfig {
  if (!path) return parseConfig({});
  let text: string;
  try {
    text = readFileSync(path, "utf8");
  } catch (cause) {
    throw new SluiceError(ErrorCode.InvalidConfig, `cannot read config ${path}`, { cause });
  }
  try {
    return parseConfig(JSON.parse(text));
  } catch (cause) {
    if (cause instanceof SluiceError) throw cause;
    throw new SluiceError(ErrorCode.InvalidConfig, `config ${path} is not valid JSON`, { cause });
  }
}
