// Temporary bans of peers that failed, with exponential backoff (15 s, 30 s, 60 s, … as Petals).
// Pure: the clock is passed in.

export const FIRST_BAN_MS = 15_000;
export const MAX_BAN_MS = 15 * 60_000;

export class BanList {
  private bans = new Map<string, { until: number; strikes: number }>();

  ban(peerId: string, now: number): number {
    const strikes = (this.bans.get(peerId)?.strikes ?? 0) + 1;
    const duration = Math.min(MAX_BAN_MS, FIRST_BAN_MS * 2 ** (strikes - 1));
    this.bans.set(peerId, { until: now + duration, strikes });
    return duration;
  }

  isBanned(peerId: string, now: number): boolean {
    return (this.bans.get(peerId)?.until ?? -Infinity) > now;
  }

  banned(now: number): Set<string> {
    return new Set([...this.bans].filter(([, b]) => b.until > now).map(([id]) => id));
  }
}
