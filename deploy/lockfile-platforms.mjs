// Adds Biome's per-platform binaries to package-lock.json. The registry mirror this project is
// built against serves only the Linux packages, so `npm install` leaves the others out of the
// lockfile and `npm ci` then rejects it. npm never fetches an optional package whose os/cpu do
// not match the machine, so these entries only make the lockfile complete. Run after any
// `npm install` that rewrites the lockfile: node deploy/lockfile-platforms.mjs
import { readFileSync, writeFileSync } from "node:fs";

const lock = JSON.parse(readFileSync("package-lock.json", "utf8"));
const biome = lock.packages["node_modules/@biomejs/biome"];
const platforms = {
  "cli-android-arm64": ["android", "arm64"],
  "cli-android-x64": ["android", "x64"],
  "cli-darwin-arm64": ["darwin", "arm64"],
  "cli-darwin-x64": ["darwin", "x64"],
  "cli-linux-arm64": ["linux", "arm64"],
  "cli-linux-arm64-musl": ["linux", "arm64", "musl"],
  "cli-linux-x64": ["linux", "x64"],
  "cli-linux-x64-musl": ["linux", "x64", "musl"],
  "cli-win32-arm64": ["win32", "arm64"],
  "cli-win32-x64": ["win32", "x64"],
};
let added = 0;
for (const [name, [os, cpu, libc]] of Object.entries(platforms)) {
  const key = `node_modules/@biomejs/${name}`;
  if (lock.packages[key]) continue;
  lock.packages[key] = {
    version: biome.version,
    cpu: [cpu],
    dev: true,
    license: "MIT OR Apache-2.0",
    optional: true,
    os: [os],
    ...(libc ? { libc: [libc] } : {}),
    engines: { node: ">=14.21.3" },
  };
  added++;
}
const { "": root, ...rest } = lock.packages;
lock.packages = { "": root, ...Object.fromEntries(Object.entries(rest).sort(([a], [b]) => (a < b ? -1 : 1))) };
writeFileSync("package-lock.json", `${JSON.stringify(lock, null, 2)}\n`);
console.log(`package-lock.json: ${added} platform entries added`);
