import { InvalidArgumentError } from "commander";

/** A commander parser for a whole-number option of at least `min`. */
export const intOption =
  (name: string, min = 0) =>
  (v: string): number => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < min)
      throw new InvalidArgumentError(`${name} must be a whole number >= ${min}`);
    return n;
  };
