/** Every error code is documented: the README's Errors table lists each value of `ErrorCode`. */
import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";
import { ErrorCode } from "../../shared/contract/errors.js";

const readme = readFileSync(join(dirname(fileURLToPath(import.meta.url)), "../../README.md"), "utf8");

describe("README", () => {
  it("lists every error code in its Errors table, and no code the enum lacks", () => {
    const table = readme.slice(
      readme.indexOf("## Errors"),
      readme.indexOf("\n## ", readme.indexOf("## Errors") + 5),
    );
    const listed = [...table.matchAll(/^\| `([A-Z_]+)` \|/gm)].map((m) => m[1]);
    expect(listed.sort()).toEqual(Object.values(ErrorCode).sort());
  });
});
