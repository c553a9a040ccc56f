// Reputation (security design §7 and §8): the score a client keeps for each node it has used, and
// what follows from it. Pure decisions only: time is passed in, nothing here reads a clock, a file
// or the network, so the same functions run in a node's client, in the CLI and in a simulator with
// a fake clock. The ledger (ledger.ts) persists what these functions decide.
//
// The rule is the paper's: R' = clamp(R · Pen^M · Rew^(1−M), 0.1, 10) with R₀ = 1, Pen = 0.8,
// Rew = 1.01, and M = 1 when the node failed the request. Tiers, the routing normalisation and the
// cooldowns after misbehaviour are Tessera's (inferred in the design).

/** The factor a failed request multiplies the score by (Pen). */
export const PENALTY = 0.8;
/** The factor a served request multiplies the score by (Rew). */
export const REWARD = 1.01;
/** The lowest score a node can fall to. */
export const MIN = 0.1;
/** The highest score a node can reach. */
export const MAX = 10;
/** The score of a node the client has no history with (R₀). */
export const INITIAL = 1;
/** Routing avoids nodes scoring below this unless nothing else serves a block (tier C). */
export const AVOID_BELOW = 0.5;
/** The lowest score of tier A (eligible as a verifier and for `verified` traffic). */
export const TIER_A_FROM = 2;
/** The first cooldown after misbehaviour; each repeat doubles it. */
export const COOLDOWN_BASE_MS = 10 * 60_000;
/** The longest cooldown. */
export const COOLDOWN_MAX_MS = 24 * 3_600_000;

/**
 * What a request (or a check) said about a node. `ok`: served correctly; `error`: failed or
 * answered malformed; `timeout`: did not answer in time; `caught`: a verification check (replay,
 * consensus, commitment) proved its output wrong; `throughput-lie`: it announced more speed than
 * it delivers; `trial-pass` / `trial-fail`: a known-answer trial (§8); `outvoted`: on the minority
 * side of a consensus vote (§6).
 */
export type Outcome = "ok" | "error" | "timeout" | "caught" | "throughput-lie" | "trial-pass" | "trial-fail" | "outvoted";

/** Every outcome, in a fixed order (for validation and tables). */
export const OUTCOMES: readonly Outcome[] = ["ok", "error", "timeout", "caught", "throughput-lie", "trial-pass", "trial-fail", "outvoted"];

const FAILURES: ReadonlySet<Outcome> = new Set(["error", "timeout", "caught", "throughput-lie", "trial-fail", "outvoted"]);
const MISBEHAVIOUR: ReadonlySet<Outcome> = new Set(["caught", "trial-fail", "outvoted", "throughput-lie"]);

/** Whether an outcome counts as a failure (M = 1 in the update rule): anything but `ok` and `trial-pass`. */
export function isFailure(outcome: Outcome): boolean {
  return FAILURES.has(outcome);
}

/** Whether a string names an outcome. */
export function isOutcome(value: string): value is Outcome {
  return (OUTCOMES as readonly string[]).includes(value);
}

/** The score after one request: R · 0.8 on a failure, R · 1.01 otherwise, kept within [0.1, 10]. */
export function nextReputation(r: number, failed: boolean): number {
  if (!Number.isFinite(r)) throw new RangeError(`reputation ${r} is not a finite number`);
  const m = failed ? 1 : 0;
  return Math.min(MAX, Math.max(MIN, r * PENALTY ** m * REWARD ** (1 - m)));
}

/** The score mapped onto [0, 1] on a log scale: log(R / 0.1) / log(100), so 0.1 → 0, 1 → 0.5, 10 → 1. */
export function normalisedReputation(r: number): number {
  return Math.min(1, Math.max(0, Math.log(r / MIN) / Math.log(MAX / MIN)));
}

/** A reputation tier: A (R ≥ 2) may verify and carry `verified` traffic, B (0.5 ≤ R < 2) is ordinary, C (R < 0.5) gets trials and `standard` traffic only. */
export type Tier = "A" | "B" | "C";

/** The tier of a score. */
export function tier(r: number): Tier {
  return r >= TIER_A_FROM ? "A" : r >= AVOID_BELOW ? "B" : "C";
}

/** The extra cost, in seconds per hop, routing adds for a node: alpha at the lowest score, none at the highest. */
export function routingPenaltySeconds(r: number, alpha = 0.05): number {
  return alpha * (1 - normalisedReputation(r));
}

/**
 * The cooldown an outcome starts, in milliseconds (0: none). Misbehaviour (`caught`, `trial-fail`,
 * `outvoted`, `throughput-lie`) starts one of 10 minutes, or twice the previous one when the node
 * has had one before (at most 24 hours); other outcomes start none.
 */
export function cooldownAfter(outcome: Outcome, previousCooldownMs = 0): number {
  if (!MISBEHAVIOUR.has(outcome)) return 0;
  return previousCooldownMs > 0 ? Math.min(COOLDOWN_MAX_MS, previousCooldownMs * 2) : COOLDOWN_BASE_MS;
}

/** How many times a node had each outcome. */
export interface OutcomeCounts {
  ok: number;
  errors: number;
  timeouts: number;
  caught: number;
  /** Throughput lies. */
  lies: number;
  outvoted: number;
  trialsPassed: number;
  trialsFailed: number;
}

/** Where a node stands with a client: its score, its history in counts, and any cooldown. */
export interface Standing extends OutcomeCounts {
  score: number;
  /** Outcomes that counted as failures (M = 1), of every kind. */
  failures: number;
  /** When the node was first and last heard of (ms since the epoch); undefined before any outcome. */
  firstSeen?: number;
  lastSeen?: number;
  /** The end of its cooldown (ms since the epoch), if it ever had one; it may have passed. */
  cooldownUntil?: number;
  /** The length of the last cooldown it started (0: never had one); the next one doubles it. */
  cooldownMs: number;
}

const COUNT_OF: Record<Outcome, keyof OutcomeCounts> = {
  ok: "ok",
  error: "errors",
  timeout: "timeouts",
  caught: "caught",
  "throughput-lie": "lies",
  outvoted: "outvoted",
  "trial-pass": "trialsPassed",
  "trial-fail": "trialsFailed",
};

/** The standing of a node with no history: score 1, no counts, no cooldown. */
export function initialStanding(): Standing {
  return { score: INITIAL, ok: 0, errors: 0, timeouts: 0, caught: 0, lies: 0, outvoted: 0, trialsPassed: 0, trialsFailed: 0, failures: 0, cooldownMs: 0 };
}

/**
 * The standing after one outcome at time `now`: the score updated by the rule, the outcome counted,
 * and a cooldown started (or lengthened) per `cooldownAfter`. A cooldown already running is never
 * shortened, and the doubling never resets: a repeat offender stays on long cooldowns.
 */
export function applyOutcome(s: Standing, outcome: Outcome, now: number): Standing {
  const failed = isFailure(outcome);
  const next: Standing = { ...s, score: nextReputation(s.score, failed), firstSeen: s.firstSeen ?? now, lastSeen: now };
  next[COUNT_OF[outcome]] += 1;
  if (failed) next.failures += 1;
  const cooldown = cooldownAfter(outcome, s.cooldownMs);
  if (cooldown > 0) {
    next.cooldownMs = cooldown;
    next.cooldownUntil = Math.max(s.cooldownUntil ?? 0, now + cooldown);
  }
  return next;
}

/** Whether a standing's cooldown is still running at `now`. */
export function coolingDown(s: Pick<Standing, "cooldownUntil">, now: number): boolean {
  return s.cooldownUntil !== undefined && now < s.cooldownUntil;
}
