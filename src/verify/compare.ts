// Verdicts on recomputed work: does a node's claimed output match a verifier's recomputation of
// the same span on the same input? Pure functions over rows of floats; the client calls them
// with both outputs in the same wire precision (the verifier's rows requantized as the node's
// were), so an honest node differs only by floating-point reordering (other thread counts,
// batch shapes: a decode step against the verifier's one-shot prefill) and a rounding-boundary
// flip here and there.

/**
 * How far an honest row may be from its recomputation. 8- and 16-bit codecs round a value that
 * sits on a rounding boundary one way on the node and the other way on the verifier: one code
 * step on a few elements of a row (measured: up to 2.6e-3 of a blockwise-8-bit row's norm from a
 * single flip). So the error leaves out a row's largest differences (`trimFraction` of its width,
 * at least 2) and every element must stay within `maxElementError` of the row's largest
 * magnitude (a few code steps), which bounds what the trimmed elements could carry.
 */
export interface Tolerance {
  /** Largest relative L2 error ‖claimed − ref‖ / ‖ref‖ of a row once its largest differences are left out. */
  maxRelativeError: number;
  /** Share of a row's elements (its largest differences) left out of the error. */
  trimFraction: number;
  /** Largest difference any element may have, as a fraction of the row's largest magnitude. */
  maxElementError: number;
}

/**
 * Calibrated by `npm run bench -- verify` (bench/results/verify.json, `calibration`) on the
 * shipped model: over 8032 windows of honest nodes (1 and 2 threads on either side; codecs none,
 * f16 and blockwise8; decode steps against the verifier's one-shot prefill) the largest error was
 * 8.6e-6 (p99.9 below 5e-7); the smallest error of a cheated step, 1.0e-4 (one block's weights
 * perturbed by 1%, seen in the logits); 1% output noise gives 8e-3.
 */
export const DEFAULT_TOLERANCE: Tolerance = { maxRelativeError: 2e-5, trimFraction: 1 / 128, maxElementError: 0.05 };

/**
 * The error of each row of `claimed` against `reference` ([rows × width] each): the relative L2
 * error without the row's largest differences, or Infinity for a row with a non-finite value or
 * an element beyond `maxElementError`.
 */
export function rowErrors(claimed: Float32Array, reference: Float32Array, width: number, tol: Tolerance = DEFAULT_TOLERANCE): Float64Array {
  if (claimed.length !== reference.length || width <= 0 || claimed.length % width !== 0) {
    throw new RangeError(`cannot compare ${claimed.length} values with ${reference.length} in rows of ${width}`);
  }
  const rows = claimed.length / width;
  const trim = Math.min(width - 1, Math.max(2, Math.ceil(width * tol.trimFraction)));
  const out = new Float64Array(rows);
  const squares = new Float64Array(width);
  for (let r = 0; r < rows; r++) {
    let norm = 0;
    let absMax = 0;
    let worst = 0;
    let finite = true;
    for (let i = 0; i < width; i++) {
      const c = claimed[r * width + i]!;
      const v = reference[r * width + i]!;
      if (!Number.isFinite(c)) finite = false;
      const d = Math.abs(c - v);
      squares[i] = d * d;
      worst = Math.max(worst, d);
      norm += v * v;
      absMax = Math.max(absMax, Math.abs(v));
    }
    if (!finite || !(worst <= tol.maxElementError * absMax || worst === 0)) {
      out[r] = Infinity;
      continue;
    }
    squares.sort();
    let diff = 0;
    for (let i = 0; i < width - trim; i++) diff += squares[i]!;
    out[r] = Math.sqrt(diff) / Math.max(Math.sqrt(norm), 1e-30);
  }
  return out;
}

/** The first row of `claimed` outside the tolerance, with its error; undefined when all agree. */
export function firstMismatch(
  claimed: Float32Array,
  reference: Float32Array,
  width: number,
  tol: Tolerance = DEFAULT_TOLERANCE,
): { row: number; error: number } | undefined {
  const errors = rowErrors(claimed, reference, width, tol);
  for (let row = 0; row < errors.length; row++) {
    const error = errors[row]!;
    if (!(error <= tol.maxRelativeError)) return { row, error };
  }
  return undefined;
}

/** Whether two answers agree row by row within the tolerance (for majorities among verifiers). */
export function agree(a: Float32Array, b: Float32Array, width: number, tol: Tolerance = DEFAULT_TOLERANCE): boolean {
  return firstMismatch(a, b, width, tol) === undefined;
}

/**
 * The consensus decision (arXiv 2407.19401: k redundant executions, majority). Answer 0 is the
 * prover's, 1..k the verifiers' (undefined: absent, nothing revealed); `agrees(i, j)` compares two
 * present answers. The answers that agree with a strict majority of the present ones form the
 * reference; everyone present outside it is on the losing side (the prover, or a verifier). No
 * strict majority: no verdict (the caller escalates or leaves the work unverified).
 */
export function consensusVerdict(
  present: readonly boolean[],
  agrees: (i: number, j: number) => boolean,
): { decided: false } | { decided: true; majority: number[]; losers: number[] } {
  const ids = present.flatMap((p, i) => (p ? [i] : []));
  for (const candidate of ids) {
    const majority = ids.filter((j) => j === candidate || agrees(candidate, j));
    if (2 * majority.length > ids.length) return { decided: true, majority, losers: ids.filter((j) => !majority.includes(j)) };
  }
  return { decided: false };
}
