// Replay and consensus verification of one hop of a route (secure inference, arXiv 2407.19401;
// VeriLLM's observation, arXiv 2509.24257: re-checking many decode steps is one parallel
// prefill). The client already holds every input it gave the hop and keeps the outputs the hop
// returned; every `window` positions another holder of the same blocks recomputes them from the
// recorded inputs as one teacher-forced step of its own session, and the rows are compared
// within a calibrated tolerance (src/verify/compare.ts) in the same wire precision.
//
// Replay: one verifier; a disagreement is settled by a second one (2 of 3), so a lying verifier
// cannot get an honest node banned where a third holder exists. Consensus: k verifiers commit to
// their answers (signed output hashes) before any reveals, and the majority decides.
import type { ForwardInput, ForwardOutput } from "../engine/interface.js";
import { agree, consensusVerdict, DEFAULT_TOLERANCE, firstMismatch, type Tolerance } from "../verify/compare.js";
import { type Codec, decodeTensor, encodeTensor } from "../wire/tensor-frame.js";
import { errorMessage, logger } from "../log.js";
import type { Hop } from "./records.js";
import type { RemoteSpan } from "./route-session.js";
import { logitsCodec } from "./span-server.js";

const log = logger("swarm:check");

export interface VerifyPolicy {
  /** Share of a session's spans that are checked, 0 to 1 (each hop is drawn when it joins the route). */
  rate: number;
  /** "replay" (default): one verifier, a second on a disagreement. "consensus": k verifiers, commit-reveal, majority. */
  mode?: "replay" | "consensus";
  /** Verifiers per check in consensus mode (odd; default 3). */
  k?: number;
  /** Positions recomputed per check (default WINDOW_TOKENS); the last window is checked when the session settles. */
  windowTokens?: number;
  tolerance?: Tolerance;
}

/** Positions per check: text is held back by at most this many tokens (plus the check's time). */
export const WINDOW_TOKENS = 16;

/** What a hop returned for one step: hidden rows of every position, or the logits of the last (or every) position. */
export interface OutputRecord {
  from: number;
  to: number;
  rows: Float32Array;
  /** Only position to − 1 (logits of a step that did not ask for all). */
  lastOnly: boolean;
}

/** A verifier's session on the hop's blocks. */
export interface Verifier {
  peerId: string;
  span: RemoteSpan;
  /** Positions it has run. */
  length: number;
}

/** What a check concluded about the hop's node. */
export type Finding =
  | { kind: "caught"; position: number; error: number; by: string[]; outvoted: string[] }
  | { kind: "passed"; to: number; by: string[]; outvoted: string[] }
  | { kind: "unverifiable"; reason: string };

export interface CheckContext {
  /** Opens a verifier session on `hop`'s blocks on a node other than `excluded`; undefined when there is none. */
  openVerifier(start: number, end: number, excluded: ReadonlySet<string>): Promise<Verifier | undefined>;
  /** The hop's recorded inputs for positions [from, to), as the node decoded them. */
  inputs(from: number, to: number): ForwardInput;
  /** Codec of the prover's session (its outputs came back in it). */
  codec: Codec;
  head: boolean;
}

/** The verification state of one hop of a route. */
export class SpanCheck {
  readonly outputs: OutputRecord[] = [];
  /** Positions [0, checkedTo) are checked. */
  checkedTo = 0;
  verifiers: Verifier[] = [];
  /** Every peer that ever verified this hop, for reports. */
  readonly verifiedBy = new Set<string>();
  /** The check in flight (checks of a hop run one after another). */
  private queue: Promise<void> = Promise.resolve();
  private running = 0;
  /** Set by truncate(): results of checks started before it are stale. */
  private epoch = 0;
  finding?: Finding & { kind: "caught" };
  unverifiable?: string;
  windows = 0;
  recomputed = 0;
  /** Row width of the hop's outputs (hidden size, or vocabulary size for the head), known from its first output. */
  width = 0;
  /**
   * Positions below this are settled whatever this hop's check says: a replacement replays
   * history whose outputs downstream came from hops already checked; a wrong replay shows in its
   * later outputs, and rolling back never goes below it.
   */
  floor = 0;

  constructor(
    readonly hop: Hop,
    private readonly policy: VerifyPolicy,
    private readonly ctx: CheckContext,
    private readonly onOutvoted: (peerId: string, hop: Hop) => void,
    /** Called with the inputs and agreed outputs of positions [0, n) when a check from position 0 passes (for the trial pool). */
    private readonly onReference?: (positions: number, input: ForwardInput, output: Float32Array) => void,
  ) {}

  get window(): number {
    return this.policy.windowTokens ?? WINDOW_TOKENS;
  }

  get busy(): boolean {
    return this.running > 0;
  }

  /** Whether the hop's outputs are settled up to `position` (checked, or the hop cannot be checked). */
  settledTo(position: number): number {
    return this.unverifiable !== undefined ? position : Math.min(position, Math.max(this.floor, this.checkedTo));
  }

  record(out: OutputRecord): void {
    this.outputs.push(out);
  }

  /** Starts a check of [checkedTo, to) after the one in flight. */
  start(to: number): void {
    if (this.finding || this.unverifiable !== undefined || to <= this.checkedTo) return;
    const epoch = this.epoch;
    this.running++;
    this.queue = this.queue
      .then(() => (epoch === this.epoch && !this.finding && to > this.checkedTo ? this.check(to, epoch) : undefined))
      .catch((e: unknown) => log.error("peer %s blocks [%d, %d): check failed: %s", this.hop.peerId, this.hop.start, this.hop.end, errorMessage(e)))
      .finally(() => this.running--);
  }

  /** Resolves when every check started so far is done. */
  async idle(): Promise<void> {
    while (this.running) await this.queue;
  }

  /** Forgets outputs from `position` on (a rollback); checks in flight are discarded. */
  truncate(position: number): void {
    this.epoch++;
    // The verifiers roll back after the check in flight (whose result is now discarded) is done.
    this.queue = this.queue.then(() => {
      for (const v of this.verifiers) {
        if (v.length <= position) continue;
        v.length = position;
        void v.span.truncate(position);
      }
    });
    this.checkedTo = Math.min(this.checkedTo, position);
    for (let i = this.outputs.length - 1; i >= 0; i--) {
      const o = this.outputs[i]!;
      if (o.to <= position) continue;
      // A part of a blockwise-8-bit frame cannot be requantized as the node's whole frame was: it is dropped, not compared.
      if (o.from >= position || o.lastOnly || this.ctx.codec === "blockwise8") this.outputs.splice(i, 1);
      else this.outputs[i] = { ...o, to: position, rows: o.rows.slice(0, (position - o.from) * this.width) };
    }
    if (this.finding && this.finding.position >= position) this.finding = undefined;
  }

  close(): void {
    for (const v of this.verifiers) void v.span.close().catch((e: unknown) => log.trace("verifier %s: close failed: %s", v.peerId, errorMessage(e)));
    this.verifiers = [];
  }

  private async check(to: number, epoch: number): Promise<void> {
    const from = this.checkedTo;
    const want = this.policy.mode === "consensus" ? (this.policy.k ?? 3) : 1;
    await this.fillVerifiers(want);
    if (epoch !== this.epoch) return;
    if (!this.verifiers.length) {
      this.unverifiable = `no other node serves blocks [${this.hop.start}, ${this.hop.end})`;
      log("peer %s blocks [%d, %d): unverifiable: %s", this.hop.peerId, this.hop.start, this.hop.end, this.unverifiable);
      return;
    }
    const asked = [...this.verifiers];
    const answers = await Promise.all(asked.map((v) => this.recompute(v, from, to, this.policy.mode === "consensus")));
    if (epoch !== this.epoch) return;
    let finding: Finding;
    if (this.policy.mode === "consensus") finding = this.decide(from, to, answers);
    else {
      const first = answers[0];
      if (!first) {
        this.dropVerifier(0, "gave no answer");
        return; // retried with another verifier on the next check
      }
      const mismatch = this.mismatch(from, to, first);
      finding = mismatch ? await this.dispute(from, to, first, mismatch) : { kind: "passed", to, by: [this.verifiers[0]!.peerId], outvoted: [] };
    }
    if (epoch !== this.epoch) return;
    this.windows++;
    this.recomputed += to - from;
    if (finding.kind === "caught") {
      this.finding = finding;
      log.error(
        "peer %s blocks [%d, %d): caught at position %d (error %s; verified by %s)",
        this.hop.peerId,
        this.hop.start,
        this.hop.end,
        finding.position,
        finding.error.toExponential(2),
        finding.by.join(", "),
      );
    } else if (finding.kind === "passed") {
      // An answer of a verifier that agreed with the node.
      const reference = answers[asked.findIndex((v) => finding.by.includes(v.peerId))];
      if (from === 0 && to > 0 && reference && this.onReference) {
        try {
          this.onReference(to, this.ctx.inputs(0, to), reference.slice());
        } catch (e) {
          log.error("blocks [%d, %d): could not keep a known answer: %s", this.hop.start, this.hop.end, errorMessage(e));
        }
      }
      this.checkedTo = to;
      for (const p of finding.by) this.verifiedBy.add(p);
      // Outputs before the checked position are no longer needed.
      for (let i = this.outputs.length - 1; i >= 0; i--) if (this.outputs[i]!.to <= to) this.outputs.splice(i, 1);
      log.trace("peer %s blocks [%d, %d): positions [%d, %d) verified by %s", this.hop.peerId, this.hop.start, this.hop.end, from, to, finding.by.join(", "));
    }
  }

  /** Opens verifiers until there are `want` (or no other holder is left). */
  private async fillVerifiers(want: number): Promise<void> {
    while (this.verifiers.length < want) {
      const excluded = new Set([this.hop.peerId, ...this.verifiers.map((v) => v.peerId)]);
      const v = await this.ctx.openVerifier(this.hop.start, this.hop.end, excluded);
      if (!v) return;
      this.verifiers.push(v);
    }
  }

  private dropVerifier(index: number, why: string): void {
    const [v] = this.verifiers.splice(index, 1);
    if (!v) return;
    log("verifier %s of blocks [%d, %d) %s: dropped", v.peerId, this.hop.start, this.hop.end, why);
    void v.span.close().catch((e: unknown) => log.trace("verifier %s: close failed: %s", v.peerId, errorMessage(e)));
  }

  /**
   * The verifier's rows for [from, to): it first catches up on positions it has not run (a new
   * verifier starts from 0), all as one step. Undefined when it fails (it is dropped).
   */
  private async recompute(v: Verifier, from: number, to: number, committed: boolean): Promise<Float32Array | undefined> {
    try {
      if (v.length > from) {
        // It ran positions of a check whose result was discarded (a rollback): roll it back too.
        v.length = from;
        await v.span.truncate(from);
      }
      const start = v.length;
      const input = this.ctx.inputs(start, to);
      const opts = { allLogits: this.ctx.head };
      let out: ForwardOutput;
      if (committed && v.span.commit) {
        const c = await v.span.commit(input, opts);
        out = await c.reveal();
      } else out = await v.span.forward(input, opts);
      const rows = this.ctx.head ? out.logits : out.hidden;
      const width = this.width;
      if (!rows || rows.length !== (to - start) * width)
        throw new Error(`returned ${rows?.length ?? 0} values for positions [${start}, ${to}) of width ${width}`);
      v.length = to;
      return rows.subarray((from - start) * width);
    } catch (e) {
      log.error("verifier %s of blocks [%d, %d) failed: %s", v.peerId, this.hop.start, this.hop.end, errorMessage(e));
      const i = this.verifiers.indexOf(v);
      if (i >= 0) this.dropVerifier(i, "failed");
      return undefined;
    }
  }

  /** The prover's first output row in [from, to) outside the tolerance of `reference` (the verifier's rows of [from, to)). */
  private mismatch(from: number, to: number, reference: Float32Array): { position: number; error: number } | undefined {
    const width = this.width;
    const tol = this.policy.tolerance ?? DEFAULT_TOLERANCE;
    for (const o of this.outputs) {
      if (o.to <= from || o.from >= to) continue;
      const rows = o.lastOnly ? [o.to - 1, o.to] : [o.from, o.to];
      const ref = this.requantize(reference.subarray((rows[0]! - from) * width, (rows[1]! - from) * width), rows[1]! - rows[0]!);
      const found = firstMismatch(o.rows, ref, width, tol);
      if (found) return { position: rows[0]! + found.row, error: found.error };
    }
    return undefined;
  }

  /** The verifier's f32 rows in the precision the prover's rows came back in (same codec, same frame grouping). */
  private requantize(rows: Float32Array, count: number): Float32Array {
    const codec = this.ctx.head ? logitsCodec(this.ctx.codec) : this.ctx.codec;
    if (codec === "none") return rows;
    return decodeTensor(encodeTensor(rows, [1, count, this.width], codec)).data;
  }

  /** Replay mode, on a disagreement: a second verifier settles it (2 of 3); with none, the verifier is believed. */
  private async dispute(from: number, to: number, first: Float32Array, mismatch: { position: number; error: number }): Promise<Finding> {
    const v1 = this.verifiers[0]!;
    const excluded = new Set([this.hop.peerId, v1.peerId]);
    const v2 = await this.ctx.openVerifier(this.hop.start, this.hop.end, excluded);
    if (!v2) return { kind: "caught", ...mismatch, by: [v1.peerId], outvoted: [] };
    const second = await this.recompute(v2, from, to, false);
    if (!second) return { kind: "caught", ...mismatch, by: [v1.peerId], outvoted: [] };
    const tol = this.policy.tolerance ?? DEFAULT_TOLERANCE;
    if (this.mismatch(from, to, second)) {
      // Both verifiers disagree with the node.
      void v2.span.close().catch((e: unknown) => log.trace("verifier %s: close failed: %s", v2.peerId, errorMessage(e)));
      if (!agree(first, second, this.width, tol))
        log("verifiers %s and %s of blocks [%d, %d) disagree with each other too", v1.peerId, v2.peerId, this.hop.start, this.hop.end);
      return { kind: "caught", ...mismatch, by: [v1.peerId, v2.peerId], outvoted: [] };
    }
    // The second verifier agrees with the node: the first verifier was wrong.
    this.onOutvoted(v1.peerId, this.hop);
    this.verifiers.splice(0, 1, v2);
    void v1.span.close().catch((e: unknown) => log.trace("verifier %s: close failed: %s", v1.peerId, errorMessage(e)));
    return { kind: "passed", to, by: [v2.peerId], outvoted: [v1.peerId] };
  }

  /** Consensus mode: answer 0 is the prover's, then the verifiers'; the majority decides. */
  private decide(from: number, to: number, answers: (Float32Array | undefined)[]): Finding {
    const verifiers = [...this.verifiers];
    const present = [true, ...answers.map((a) => a !== undefined)];
    const tol = this.policy.tolerance ?? DEFAULT_TOLERANCE;
    const agrees = (i: number, j: number): boolean => {
      if (i === j) return true;
      if (i === 0 || j === 0) return !this.mismatch(from, to, answers[(i || j) - 1]!);
      return firstMismatch(answers[i - 1]!, answers[j - 1]!, this.width, tol) === undefined;
    };
    const verdict = consensusVerdict(present, agrees);
    if (!verdict.decided) {
      log(
        "blocks [%d, %d), positions [%d, %d): no majority among %d answers; checked again with fresh verifiers",
        this.hop.start,
        this.hop.end,
        from,
        to,
        present.filter(Boolean).length,
      );
      for (let i = this.verifiers.length - 1; i >= 0; i--) this.dropVerifier(i, "in a check with no majority");
      return { kind: "passed", to: from, by: [], outvoted: [] };
    }
    const outvoted = verdict.losers.filter((i) => i > 0).map((i) => verifiers[i - 1]!.peerId);
    for (const peer of outvoted) {
      this.onOutvoted(peer, this.hop);
      const at = this.verifiers.findIndex((v) => v.peerId === peer);
      if (at >= 0) this.dropVerifier(at, "outvoted");
    }
    const by = verdict.majority.filter((i) => i > 0).map((i) => verifiers[i - 1]!.peerId);
    if (verdict.majority.includes(0)) return { kind: "passed", to, by, outvoted };
    const reference = answers[verdict.majority[0]! - 1]!;
    const mismatch = this.mismatch(from, to, reference) ?? { position: from, error: Infinity };
    return { kind: "caught", ...mismatch, by, outvoted };
  }
}
