/** The system's Chromium, which the browser tests drive through playwright-core; undefined if none. */
import { existsSync } from "node:fs";

export const CHROMIUM = ["/usr/bin/chromium", "/usr/bin/chromium-browser"].find((p) => existsSync(p));
