// Fair scheduling of a node's engine work across peers (start-time fair queuing): each peer has a
// virtual clock that advances by the tokens of the work it ran, and the next piece of work to
// run is the one of the peer whose clock is least. One peer looping long prefills then waits
// behind its own work, and another peer's decode step runs after at most the chunk in flight.
// It also says when a peer shares the engine with others (`contended`), so the caller can cut a
// long step into smaller chunks while someone else is waiting between their steps.
// Pure bookkeeping: no clock (the caller passes the time), no I/O; the engine work is passed in.
import { errorMessage, logger } from "../log.js";

const log = logger("swarm:scheduler");

interface Waiting {
  peer: string;
  cost: number;
  start: () => void;
}

export class FairScheduler {
  private running = 0;
  private readonly waiting: Waiting[] = [];
  /** Per peer: virtual time, the tokens of work it ran (kept relative to the least busy waiting peer). */
  private readonly clock = new Map<string, number>();
  /** The virtual time of the work last started: a peer that was idle starts here, not at 0. */
  private now = 0;
  /** Per peer: when (the caller's clock, ms) it last asked for work. */
  private readonly seen = new Map<string, number>();

  /** `concurrency` pieces of work run at once (1: the engine's threads are not shared between runs). */
  constructor(private readonly concurrency = 1) {
    if (!(concurrency >= 1)) throw new RangeError(`a scheduler runs at least 1 piece of work at a time, not ${concurrency}`);
  }

  /** Work queued and not yet started. */
  get queued(): number {
    return this.waiting.length;
  }

  /**
   * Whether another peer has work waiting, or asked for work within `windowMs` of `at` (a decoder
   * between two tokens): then `peer`'s long steps should run in smaller chunks.
   */
  contended(peer: string, at: number, windowMs: number): boolean {
    if (this.waiting.some((w) => w.peer !== peer)) return true;
    for (const [other, t] of this.seen) if (other !== peer && at - t <= windowMs) return true;
    return false;
  }

  /** Runs `task` for `peer` when its turn comes; `cost` is its size in tokens (≥ 1); `at` is the caller's time (ms). */
  async run<T>(peer: string, cost: number, task: () => Promise<T>, at?: number): Promise<T> {
    if (at !== undefined) {
      this.seen.delete(peer); // kept in order of last use, so the oldest are dropped first
      this.seen.set(peer, at);
      if (this.seen.size > 1024) this.seen.delete(this.seen.keys().next().value!);
    }
    await new Promise<void>((start) => {
      this.waiting.push({ peer, cost: Math.max(1, cost), start });
      this.dispatch();
    });
    try {
      return await task();
    } finally {
      this.running--;
      this.dispatch();
    }
  }

  private dispatch(): void {
    while (this.running < this.concurrency && this.waiting.length) {
      let best = 0;
      for (let i = 1; i < this.waiting.length; i++) if (this.tag(this.waiting[i]!.peer) < this.tag(this.waiting[best]!.peer)) best = i;
      const [next] = this.waiting.splice(best, 1);
      if (!next) return;
      const start = this.tag(next.peer);
      this.now = start;
      this.clock.set(next.peer, start + next.cost);
      this.running++;
      try {
        next.start();
      } catch (e) {
        log.error("starting work for %s failed: %s", next.peer, errorMessage(e));
      }
    }
    // Peers with nothing waiting are forgotten once behind: an idle peer restarts at the current time.
    if (this.clock.size > 1024) for (const [peer, t] of this.clock) if (t <= this.now) this.clock.delete(peer);
  }

  /** A peer's virtual start time: its clock, or the current virtual time if it was idle (no credit for idleness). */
  private tag(peer: string): number {
    return Math.max(this.clock.get(peer) ?? 0, this.now);
  }
}
