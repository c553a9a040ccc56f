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

/** Repeatable "ID=BIAS" (BIAS a number, or -inf to ban the token) into a map. */
export function logitBiasArg(value: string, previous: Map<number, number> = new Map()): Map<number, number> {
  const match = /^(\d+)=(-?inf|[-+]?\d*\.?\d+(?:e[-+]?\d+)?)$/i.exec(value.trim());
  if (!match) throw new InvalidArgumentError(`expected TOKEN_ID=BIAS (e.g. 42=-100 or 42=-inf), got '${value}'`);
  const bias = /inf/i.test(match[2]!) ? (match[2]!.startsWith("-") ? -Infinity : Infinity) : Number(match[2]);
  return new Map(previous).set(Number(match[1]), bias);
}

/** --verify: a rate in [0, 1], or "consensus". */
export function verifyArg(value: string): number | "consensus" {
  if (value === "consensus") return value;
  const n = Number(value);
  if (!(value.trim() !== "" && n >= 0 && n <= 1)) throw new InvalidArgumentError(`expected a rate from 0 to 1 or 'consensus', got '${value}'`);
  return n;
}
