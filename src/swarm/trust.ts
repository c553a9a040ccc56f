// The route session's view of a reputation ledger (src/verify/ledger.ts): scores for routing,
// who to avoid (a cooldown, or a score under AVOID_BELOW), and every outcome recorded under the
// model it concerns.
import { AVOID_BELOW, type Outcome } from "../verify/reputation.js";
import type { TrialAnswer, TrustHooks } from "./route-session.js";

/** What the adapter needs of a ledger (ReputationLedger has it). */
export interface Ledger {
  score(peerId: string): number;
  has(peerId: string): boolean;
  inCooldown(peerId: string, now: number): boolean;
  record(peerId: string, outcome: Outcome, opts: { now: number; modelId?: string; detail?: string }): unknown;
  knownAnswers?(modelId: string, start: number, end: number): TrialAnswer[];
  addKnownAnswer?(answer: TrialAnswer & { modelId: string; created: number }): void;
}

export function ledgerTrust(ledger: Ledger, opts: { modelId?: string; now?: () => number } = {}): TrustHooks {
  const now = opts.now ?? Date.now;
  const modelId = opts.modelId ?? "";
  return {
    score: (peer) => ledger.score(peer),
    has: (peer) => ledger.has(peer),
    avoid: (peer, at) => ledger.inCooldown(peer, at) || ledger.score(peer) < AVOID_BELOW,
    record: (peer, outcome, detail) => {
      ledger.record(peer, outcome, { now: now(), modelId: opts.modelId, detail });
    },
    ...(ledger.knownAnswers && ledger.addKnownAnswer && opts.modelId !== undefined
      ? {
          knownAnswers: (start: number, end: number) => ledger.knownAnswers!(modelId, start, end),
          addKnownAnswer: (answer: TrialAnswer) => ledger.addKnownAnswer!({ ...answer, modelId, created: now() }),
        }
      : {}),
  };
}
