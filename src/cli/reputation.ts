// `tessera reputation`: what this client's reputation ledger says about the nodes it has used.
import { existsSync } from "node:fs";
import { resolve } from "node:path";
import { defaultLedgerPath, type LedgerEntry, type LedgerEvent, ReputationLedger } from "../verify/ledger.js";

interface ReputationFlags {
  ledger?: string;
  json?: boolean;
  events?: string;
}

/** Prints the ledger's nodes (best first) as a table or JSON, or with `--events PEER` one node's recorded outcomes. */
export async function reputationCommand(flags: ReputationFlags): Promise<void> {
  const file = resolve(flags.ledger ?? defaultLedgerPath());
  const now = Date.now();
  // A ledger that does not exist yet is empty; reading it should not create it.
  const ledger = existsSync(file) ? ReputationLedger.open(file) : undefined;
  try {
    const entries = ledger?.list() ?? [];
    if (flags.events !== undefined) {
      const peerId = findPeer(entries, flags.events, file);
      const events = ledger?.events(peerId, 1000) ?? [];
      if (flags.json) console.log(JSON.stringify({ ledger: file, peerId, events }, null, 1));
      else console.log(renderEvents(peerId, events));
      return;
    }
    if (flags.json) console.log(JSON.stringify({ ledger: file, peers: entries }, null, 1));
    else if (!entries.length) console.log(`no reputation recorded yet (ledger: ${file})`);
    else console.log(`${entries.length} node${entries.length === 1 ? "" : "s"} in ${file}\n${renderEntries(entries, now)}`);
  } finally {
    ledger?.close();
  }
}

/** The peer a user named: its full id, or a part of it matching exactly one node. */
function findPeer(entries: LedgerEntry[], wanted: string, file: string): string {
  const exact = entries.find((e) => e.peerId === wanted);
  if (exact) return exact.peerId;
  const matches = entries.filter((e) => e.peerId.includes(wanted.replace(/…/g, "")));
  if (matches.length === 1) return matches[0]!.peerId;
  if (!matches.length) throw new Error(`no node matching '${wanted}' in ${file}`);
  throw new Error(`'${wanted}' matches ${matches.length} nodes in ${file} (${matches.map((m) => m.peerId).join(", ")}); give more of the id`);
}

/** A peer id short enough for a table: its start and its end. */
function shortPeerId(id: string): string {
  return id.length > 18 ? `${id.slice(0, 6)}…${id.slice(-8)}` : id;
}

function duration(ms: number): string {
  const s = Math.round(ms / 1000);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
  return `${Math.floor(s / 86400)}d ${Math.floor((s % 86400) / 3600)}h`;
}

function ago(at: number, now: number): string {
  return at > now ? new Date(at).toISOString() : `${duration(now - at)} ago`;
}

function table(header: string[], rows: string[][], rightAligned: ReadonlySet<number>): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? "").length)));
  const line = (cells: string[]) =>
    cells
      .map((c, i) => (rightAligned.has(i) ? c.padStart(widths[i]!) : c.padEnd(widths[i]!)))
      .join("  ")
      .trimEnd();
  return [line(header), ...rows.map(line)].join("\n");
}

function renderEntries(entries: LedgerEntry[], now: number): string {
  const rows = entries.map((e) => [
    shortPeerId(e.peerId),
    e.score.toFixed(2),
    e.tier,
    String(e.ok),
    String(e.failures),
    String(e.caught),
    String(e.lies),
    `${e.trialsPassed}/${e.trialsFailed}`,
    e.cooldownUntil !== undefined && e.cooldownUntil > now ? duration(e.cooldownUntil - now) : "-",
    ago(e.lastSeen, now),
  ]);
  const header = ["peer", "score", "tier", "ok", "failures", "caught", "lies", "trials ok/failed", "cooldown", "last seen"];
  return table(header, rows, new Set([1, 3, 4, 5, 6, 7]));
}

function renderEvents(peerId: string, events: LedgerEvent[]): string {
  const rows = events.map((e) => [new Date(e.at).toISOString(), e.outcome, e.score.toFixed(2), e.modelId ?? "", e.detail ?? ""]);
  return `${peerId}: ${events.length} outcome${events.length === 1 ? "" : "s"}, newest first\n${table(["time", "outcome", "score", "model", "detail"], rows, new Set([2]))}`;
}
