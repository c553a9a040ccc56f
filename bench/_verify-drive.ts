// The statistical half of bench/verify.ts: drives a route of span sessions directly (no
// RouteSession, so nothing rolls back when a check fails) and checks chosen hops window by window
// with the real SpanCheck of src/swarm/span-check.ts: a fresh SpanCheck per window, starting at
// the window, on the hop's recorded inputs and outputs, with one verifier session that persists
// over the windows (so it catches up as one prefill, then recomputes each window as one step, as
// in a real session). Every window's verdict is the SpanCheck's finding; the per-row errors (for
// the distributions, and for per-step verdicts) come from src/verify/compare.ts on the verifier's
// rows requantized as SpanCheck does (the prover's codec, one frame per recorded output).
import type { ForwardInput, ForwardOutput, SpanRuntime, SpanSession } from "../src/engine/interface.js";
import { argmax } from "../src/engine/sampling.js";
import type { ModelConfig } from "../src/model/types.js";
import type { RemoteSpan } from "../src/swarm/route-session.js";
import { type OutputRecord, SpanCheck, type Verifier } from "../src/swarm/span-check.js";
import { logitsCodec } from "../src/swarm/span-server.js";
import { firstMismatch, rowErrors, type Tolerance } from "../src/verify/compare.js";
import type { Codec } from "../src/wire/tensor-frame.js";
import { received, wire } from "./_verify-swarm.js";

export interface DriveHop {
  /** The node serving the hop (the prover). */
  runtime: SpanRuntime;
  /** Another holder of the same blocks: the hop is checked when set. */
  verifier?: SpanRuntime;
  /** How many steps the node cheated on so far (an adversary's stats.cheated); none for honest nodes. */
  cheats?: () => number;
}

export interface DriveOptions {
  codec: Codec;
  window: number;
  tolerance: Tolerance;
  maxLength: number;
}

/** One step (forward call) of a checked hop. */
export interface StepVerdict {
  hop: number;
  step: number;
  from: number;
  to: number;
  cheated: boolean;
  /** Relative L2 error of each row the client received (one row for a head step without all logits). */
  errors: number[];
  /** Some row of this step is outside the tolerance (src/verify/compare.ts firstMismatch). */
  caught: boolean;
  /** Its window's SpanCheck caught the node. */
  windowCaught: boolean;
  /** For a step whose worst row is off by more than DIAGNOSE_ABOVE: what differs in that row. */
  worst?: RowDiagnosis;
}

/** Rows off by more than this get a diagnosis. */
export const DIAGNOSE_ABOVE = 1e-4;

export interface RowDiagnosis {
  error: number;
  /** Values of the row that differ at all between the claimed row and the (requantized) reference. */
  differing: number;
  width: number;
  /** The largest |claimed − reference| of the row, as a fraction of the reference row's largest |value| and of its L2 norm. */
  maxDiffOverAbsMax: number;
  maxDiffOverNorm: number;
  /** The reference row's largest |value| over its L2 norm. */
  absMaxOverNorm: number;
}

function diagnose(claimed: Float32Array, reference: Float32Array, error: number): RowDiagnosis {
  let differing = 0;
  let maxDiff = 0;
  let absMax = 0;
  let norm = 0;
  for (let i = 0; i < claimed.length; i++) {
    const d = Math.abs(claimed[i]! - reference[i]!);
    if (d > 0) differing++;
    maxDiff = Math.max(maxDiff, d);
    absMax = Math.max(absMax, Math.abs(reference[i]!));
    norm += reference[i]! * reference[i]!;
  }
  norm = Math.sqrt(norm);
  return { error, differing, width: claimed.length, maxDiffOverAbsMax: maxDiff / absMax, maxDiffOverNorm: maxDiff / norm, absMaxOverNorm: absMax / norm };
}

export interface WindowVerdict {
  hop: number;
  from: number;
  to: number;
  /** The SpanCheck's finding: caught. */
  flagged: boolean;
  /** Steps of the window the node cheated on. */
  cheatedSteps: number;
  /** The largest row error in the window. */
  maxError: number;
  /** Whether the SpanCheck's verdict equals "some row outside the tolerance" (a consistency check of this driver). */
  consistent: boolean;
}

interface Recorded extends OutputRecord {
  step: number;
  cheated: boolean;
}

/** A verifier's session as a RemoteSpan (f32, as RouteSession opens verifiers), keeping its last output for the error distributions. */
class CapturingSpan implements RemoteSpan {
  last?: { start: number; rows: Float32Array };

  constructor(private readonly session: SpanSession) {}

  async forward(input: ForwardInput, opts: { allLogits?: boolean }): Promise<ForwardOutput> {
    const start = this.session.length;
    const out = await this.session.forward(input, { allLogits: Boolean(opts.allLogits) });
    this.last = { start, rows: (out.logits ?? out.hidden)! };
    return out;
  }

  async truncate(position: number): Promise<void> {
    this.session.truncate(position);
  }

  async close(): Promise<void> {
    this.session.close();
  }
}

class CheckedHop {
  readonly inputs: ForwardInput[] = [];
  readonly counts: number[] = [];
  readonly outputs: Recorded[] = [];
  checkedTo = 0;
  readonly capture: CapturingSpan;
  readonly verifier: Verifier;

  constructor(
    readonly index: number,
    readonly runtime: SpanRuntime,
    verifierRuntime: SpanRuntime,
    maxLength: number,
  ) {
    this.capture = new CapturingSpan(verifierRuntime.openSession(maxLength));
    this.verifier = { peerId: `verifier-${index}`, span: this.capture, length: 0 };
  }

  /** Inputs of positions [from, to) as one step (what RouteSession's history gives a verifier). */
  slice(from: number, to: number, hiddenSize: number): ForwardInput {
    if (this.inputs[0]?.tokens) {
      const ids = this.inputs.flatMap((i) => Array.from(i.tokens!));
      return { tokens: ids.slice(from, to) };
    }
    const all = new Float32Array(this.counts.reduce((a, b) => a + b, 0) * hiddenSize);
    let at = 0;
    for (const i of this.inputs) {
      all.set(i.hidden!, at);
      at += i.hidden!.length;
    }
    return { hidden: all.slice(from * hiddenSize, to * hiddenSize) };
  }
}

/**
 * One session: a prefill of `prompt`, then `decode` greedy steps through the hops (each hop's
 * output crosses the wire in `opts.codec`), every checked hop checked every `opts.window` positions
 * and once more at the end. Returns every checked hop's steps and windows with their verdicts.
 */
export async function driveSession(c: ModelConfig, hops: DriveHop[], prompt: number[], decode: number, opts: DriveOptions) {
  const sessions = hops.map((h) => h.runtime.openSession(opts.maxLength));
  const checked = hops.flatMap((h, i) => (h.verifier ? [new CheckedHop(i, h.runtime, h.verifier, opts.maxLength)] : []));
  const steps: StepVerdict[] = [];
  const windows: WindowVerdict[] = [];
  const tokens: number[] = [];
  let position = 0;
  try {
    for (let s = 0; s <= decode; s++) {
      const ids = s === 0 ? prompt : [tokens.at(-1)!];
      let input: ForwardInput = { tokens: ids };
      let logits: Float32Array | undefined;
      for (const [i, hop] of hops.entries()) {
        // A node after the first decodes the hidden states the client encoded.
        const nodeInput: ForwardInput = input.hidden ? { hidden: wire(input.hidden, c.hiddenSize, opts.codec) } : input;
        const before = hop.cheats?.() ?? 0;
        const out = received(await sessions[i]!.forward(nodeInput), c, opts.codec);
        const cheated = (hop.cheats?.() ?? 0) > before;
        const check = checked.find((h) => h.index === i);
        if (check) {
          check.inputs.push(nodeInput);
          check.counts.push(ids.length);
          const rows = (out.hidden ?? out.logits)!;
          check.outputs.push({ from: position, to: position + ids.length, rows, lastOnly: Boolean(out.logits), step: s, cheated });
        }
        if (out.logits) logits = out.logits;
        else input = { hidden: out.hidden! };
      }
      position += ids.length;
      tokens.push(argmax(logits!));
      for (const h of checked) if (position - h.checkedTo >= opts.window) await checkWindow(c, h, position, opts, steps, windows);
    }
    for (const h of checked) if (position > h.checkedTo) await checkWindow(c, h, position, opts, steps, windows);
  } finally {
    for (const s of sessions) s.close();
    for (const h of checked) await h.capture.close();
  }
  return { steps, windows, tokens };
}

async function checkWindow(c: ModelConfig, h: CheckedHop, to: number, opts: DriveOptions, steps: StepVerdict[], windows: WindowVerdict[]): Promise<void> {
  const from = h.checkedTo;
  const { start, end, head } = h.runtime.span;
  const width = head ? c.vocabSize : c.hiddenSize;
  const check = new SpanCheck(
    { peerId: `prover-${h.index}`, start, end },
    { rate: 1, mode: "replay", windowTokens: opts.window, tolerance: opts.tolerance },
    {
      // The persistent verifier first; none for a second opinion (a mismatch is then the first verifier's verdict).
      openVerifier: async (_s, _e, excluded) => (excluded.has(h.verifier.peerId) ? undefined : h.verifier),
      inputs: (a, b) => h.slice(a, b, c.hiddenSize),
      codec: opts.codec,
      head,
    },
    () => {},
  );
  check.width = width;
  check.checkedTo = from;
  const inWindow = h.outputs.filter((o) => o.to > from && o.from < to);
  for (const o of inWindow) check.record(o);
  check.start(to);
  await check.idle();
  if (check.unverifiable !== undefined) throw new Error(`check of [${from}, ${to}) was unverifiable: ${check.unverifiable}`);
  if (check.windows !== 1) throw new Error(`check of [${from}, ${to}) did not run (its verifier failed?)`);
  const flagged = check.finding !== undefined;
  const last = h.capture.last;
  if (!last || last.start > from) throw new Error("the verifier's rows of the window were not captured");
  const reference = last.rows.subarray((from - last.start) * width);
  let anyOutside = false;
  let maxError = 0;
  for (const o of inWindow) {
    const [a, b] = o.lastOnly ? [o.to - 1, o.to] : [o.from, o.to];
    const ref = wire(reference.slice((a - from) * width, (b - from) * width), width, head ? logitsCodec(opts.codec) : opts.codec);
    const errors = Array.from(rowErrors(o.rows, ref, width));
    const caught = firstMismatch(o.rows, ref, width, opts.tolerance) !== undefined;
    anyOutside ||= caught;
    let worstRow = 0;
    errors.forEach((e, r) => {
      maxError = Math.max(maxError, e);
      if (e > errors[worstRow]!) worstRow = r;
    });
    const worst =
      errors[worstRow]! > DIAGNOSE_ABOVE
        ? diagnose(o.rows.subarray(worstRow * width, (worstRow + 1) * width), ref.subarray(worstRow * width, (worstRow + 1) * width), errors[worstRow]!)
        : undefined;
    steps.push({ hop: h.index, step: o.step, from: o.from, to: o.to, cheated: o.cheated, errors, caught, windowCaught: flagged, ...(worst ? { worst } : {}) });
  }
  windows.push({ hop: h.index, from, to, flagged, cheatedSteps: inWindow.filter((o) => o.cheated).length, maxError, consistent: flagged === anyOutside });
  h.checkedTo = to;
  h.verifier.length = to;
}
