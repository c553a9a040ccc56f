import { InvalidArgumentError } from "commander";

export function intArg(value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n)) throw new InvalidArgumentError(`expected an integer, got '${value}'`);
  return n;
}

export function floatArg(value: string): number {
  const n = Number(value);
  if (!Number.isFinite(n)) throw new InvalidArgumentError(`expected a number, got '${value}'`);
  return n;
}

/** "2,4" → [2, 4] */
export function intListArg(value: string): number[] {
  return value.split(",").filter(Boolean).map(intArg);
}
