// Measured attacks on Equivariant Encryption: the evidence behind the threat model
// (SECURITY.md, README.md beside this file). Pure functions over plain arrays, randomness
// passed in; nothing here depends on the EE transform itself.
//
// Conventions (as in the design): c = π[p] maps plain id → cipher id, E'[c] = E[π⁻¹(c)];
// the hidden permutation is a gather, g'[j] = g[σ(j)], E'[c, j] = E[π⁻¹(c), σ(j)].

/** One matching of cipher rows to public rows. */
export interface RowMatch {
  /** map[cipherRow] = public row, or −1 where no single public row matches. */
  map: Int32Array;
  /** Cipher rows that match no public row. */
  unmatched: number;
  /** Cipher rows that match several identical public rows (left at −1). */
  ambiguous: number;
}

/** How much of σ (cipher position → plain position) an attacker recovered. */
export interface HiddenRecovery {
  /** sigma[j] = plain position of cipher position j, or −1 where not determined. */
  sigma: Int32Array;
  unmatched: number;
  ambiguous: number;
}

/** Writes a canonical form of `row` of `matrix` into `out` (a plain copy, or a sorted one). */
type Canonicalize = (matrix: Float32Array, row: number, cols: number, out: Float32Array) => void;

const copyRow: Canonicalize = (matrix, row, cols, out) => {
  out.set(matrix.subarray(row * cols, row * cols + cols));
};

function sortSegments(segmentCols: number): Canonicalize {
  return (matrix, row, cols, out) => {
    out.set(matrix.subarray(row * cols, row * cols + cols));
    for (let start = 0; start < cols; start += segmentCols) out.subarray(start, Math.min(cols, start + segmentCols)).sort();
  };
}

/** 53-bit hash of a row's float bits: two independent 32-bit mixes, so collisions are rare at 10⁵+ rows. */
function hashBits(bits: Uint32Array): number {
  let a = 0x9e3779b9;
  let b = 0x85ebca6b;
  for (let i = 0; i < bits.length; i++) {
    a = Math.imul(a ^ bits[i]!, 0x01000193);
    b = Math.imul((b + bits[i]!) ^ (b >>> 15), 0x2c1b3c6d);
  }
  a = Math.imul(a ^ (a >>> 16), 0x45d9f3b) >>> 0;
  b = Math.imul(b ^ (b >>> 13), 0x5bd1e995) >>> 0;
  return a * 0x200000 + (b >>> 11);
}

function bitsEqual(x: Uint32Array, y: Uint32Array): boolean {
  for (let i = 0; i < x.length; i++) if (x[i] !== y[i]) return false;
  return true;
}

/**
 * Matches each cipher row to the public row with the same canonical form, bit for bit.
 * O(rows · cols): a hash index of the public rows, candidates verified exactly.
 */
function matchCanonical(publicRows: Float32Array, cipherRows: Float32Array, rows: number, cols: number, canonicalize: Canonicalize): RowMatch {
  checkShape(publicRows, rows, cols, "publicRows");
  checkShape(cipherRows, rows, cols, "cipherRows");
  const scratch = new Float32Array(cols);
  const scratchBits = new Uint32Array(scratch.buffer);
  const candidate = new Float32Array(cols);
  const candidateBits = new Uint32Array(candidate.buffer);

  // Chained hash index: head.get(key) is the first public row with that key, next[] the rest.
  const head = new Map<number, number>();
  const next = new Int32Array(rows).fill(-1);
  for (let r = rows - 1; r >= 0; r--) {
    canonicalize(publicRows, r, cols, scratch);
    const key = hashBits(scratchBits);
    next[r] = head.get(key) ?? -1;
    head.set(key, r);
  }

  const map = new Int32Array(rows).fill(-1);
  let unmatched = 0;
  let ambiguous = 0;
  for (let c = 0; c < rows; c++) {
    canonicalize(cipherRows, c, cols, scratch);
    let found = -1;
    let matches = 0;
    for (let r = head.get(hashBits(scratchBits)) ?? -1; r !== -1; r = next[r]!) {
      canonicalize(publicRows, r, cols, candidate);
      if (!bitsEqual(scratchBits, candidateBits)) continue;
      matches++;
      if (found < 0) found = r;
    }
    if (matches === 0) unmatched++;
    else if (matches > 1) ambiguous++;
    else map[c] = found;
  }
  return { map, unmatched, ambiguous };
}

function checkShape(matrix: ArrayLike<number>, rows: number, cols: number, name: string): void {
  if (matrix.length !== rows * cols) throw new RangeError(`${name} has ${matrix.length} values, expected ${rows}×${cols}`);
}

/**
 * L0 weight matching: recovers π⁻¹ (cipher id → plain id) from a public embedding or head
 * and its vocabulary-permuted copy. −1 where a row has no unique match (identical public rows).
 */
export function matchRowsExact(publicRows: Float32Array, cipherRows: Float32Array, rows: number, cols: number): Int32Array {
  return matchRowsExactDetailed(publicRows, cipherRows, rows, cols).map;
}

export function matchRowsExactDetailed(publicRows: Float32Array, cipherRows: Float32Array, rows: number, cols: number): RowMatch {
  return matchCanonical(publicRows, cipherRows, rows, cols, copyRow);
}

/**
 * L1 weight matching: a row's sorted multiset of values is invariant under σ, so matching
 * sorted rows recovers π⁻¹ even with the hidden space permuted. `segmentCols` sorts each block
 * of that many columns separately (e.g. [E | U] side by side, both permuted by the same σ).
 */
export function matchRowsSorted(publicRows: Float32Array, cipherRows: Float32Array, rows: number, cols: number, segmentCols = cols): Int32Array {
  return matchRowsSortedDetailed(publicRows, cipherRows, rows, cols, segmentCols).map;
}

export function matchRowsSortedDetailed(publicRows: Float32Array, cipherRows: Float32Array, rows: number, cols: number, segmentCols = cols): RowMatch {
  if (segmentCols <= 0 || cols % segmentCols !== 0) throw new RangeError(`segmentCols ${segmentCols} must divide cols ${cols}`);
  return matchCanonical(publicRows, cipherRows, rows, cols, sortSegments(segmentCols));
}

/**
 * Recovers σ from norm gains (g'[j] = g[σ(j)]). Several gain vectors (every layer's norms share
 * σ) are matched as one fingerprint per position; positions whose fingerprint repeats are ambiguous.
 */
export function recoverHiddenPermutation(publicGains: Float32Array | Float32Array[], cipherGains: Float32Array | Float32Array[]): HiddenRecovery {
  const pub = Array.isArray(publicGains) ? publicGains : [publicGains];
  const cip = Array.isArray(cipherGains) ? cipherGains : [cipherGains];
  if (pub.length === 0 || pub.length !== cip.length) throw new RangeError("need the same non-zero number of public and cipher gain vectors");
  const hidden = pub[0]!.length;
  for (const v of [...pub, ...cip]) if (v.length !== hidden) throw new RangeError("gain vectors differ in length");
  // Position j's fingerprint = (g_0[j], g_1[j], …): a hidden × vectors matrix.
  const stack = (vectors: Float32Array[]) => {
    const out = new Float32Array(hidden * vectors.length);
    vectors.forEach((v, k) => {
      for (let j = 0; j < hidden; j++) out[j * vectors.length + k] = v[j]!;
    });
    return out;
  };
  const { map, unmatched, ambiguous } = matchCanonical(stack(pub), stack(cip), hidden, pub.length, copyRow);
  return { sigma: map, unmatched, ambiguous };
}

/**
 * Recovers σ from the embedding once π⁻¹ is (partly) known: un-permuting the rows of E' makes
 * its columns exact columns of E, E'[π(p), j] = E[p, σ(j)]. Uses at most `maxRows` known rows.
 */
export function recoverHiddenFromEmbedding(
  publicRows: Float32Array,
  cipherRows: Float32Array,
  rows: number,
  cols: number,
  cipherToPlain: Int32Array,
  maxRows = 256,
): HiddenRecovery {
  checkShape(publicRows, rows, cols, "publicRows");
  checkShape(cipherRows, rows, cols, "cipherRows");
  const known: Array<[cipher: number, plain: number]> = [];
  for (let c = 0; c < rows && known.length < maxRows; c++) if (cipherToPlain[c]! >= 0) known.push([c, cipherToPlain[c]!]);
  if (known.length === 0) throw new RangeError("no known rows of π⁻¹ to align columns with");
  const k = known.length;
  const publicColumns = new Float32Array(cols * k);
  const cipherColumns = new Float32Array(cols * k);
  known.forEach(([c, p], i) => {
    for (let j = 0; j < cols; j++) {
      publicColumns[j * k + i] = publicRows[p * cols + j]!;
      cipherColumns[j * k + i] = cipherRows[c * cols + j]!;
    }
  });
  const { map, unmatched, ambiguous } = matchCanonical(publicColumns, cipherColumns, cols, k, copyRow);
  return { sigma: map, unmatched, ambiguous };
}

export * from "./frequency.js";
export * from "./bigram.js";
export * from "./frequency-curve.js";
