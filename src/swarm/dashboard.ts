// The swarm as a person reads it: one row per node (span, measured speed, free cache, RTT, link),
// then one bar per block showing how much decode throughput serves it, so the weakest and the
// uncovered blocks stand out. Pure: records in, text out.
import type { Hop } from "./records.js";
import type { RecordBody } from "./signed-record.js";

export interface DashboardInput {
  modelId: string;
  numBlocks: number;
  nodes: { info: RecordBody; rtt?: number }[];
  /** Width of the longest block bar, in characters. */
  barWidth?: number;
}

/** A peer id as people compare them: its last six characters. */
export const shortPeerId = (peerId: string) => `…${peerId.slice(-6)}`;
const short = shortPeerId;

/** "…a1b2c3 [0,4) → …d4e5f6 [4,8)" */
export function formatRoute(route: readonly Hop[]): string {
  return route.map((h) => `${short(h.peerId)} [${h.start},${h.end})`).join(" → ");
}
const fixed = (v: number | undefined, digits: number) => (v === undefined || !Number.isFinite(v) ? "–" : v.toFixed(digits));

export function renderSwarm({ modelId, numBlocks, nodes, barWidth = 40 }: DashboardInput): string {
  const rows = [...nodes].sort((a, b) => a.info.start - b.info.start || a.info.end - b.info.end);
  const lines = [`swarm of ${modelId}: ${rows.length} node${rows.length === 1 ? "" : "s"} online, ${numBlocks} blocks`, ""];
  const table = [
    ["node", "blocks", "decode tok/s/block", "prefill tok/s/block", "cache left", "RTT ms", "link Mbit/s", "next hops (RTT ms)", "version"],
    ...rows.map(({ info, rtt }) => [
      short(info.peerId),
      `[${info.start}, ${info.end})`,
      fixed(info.inferenceRps, 0),
      fixed(info.forwardRps, 0),
      String(info.cacheTokensLeft),
      fixed(rtt === undefined ? undefined : rtt * 1000, 2),
      info.linkMbps > 0 ? fixed(info.linkMbps, 0) : "–",
      Object.entries(info.nextPings)
        .map(([p, s]) => `${short(p)} ${fixed(s * 1000, 2)}`)
        .join(", ") || "–",
      info.version,
    ]),
  ];
  const widths = table[0]!.map((_, c) => Math.max(...table.map((r) => r[c]!.length)));
  for (const r of table)
    lines.push(
      r
        .map((cell, c) => cell.padEnd(widths[c]!))
        .join("  ")
        .trimEnd(),
    );

  const perBlock = Array.from({ length: numBlocks }, (_, b) => {
    const serving = rows.filter(({ info }) => info.start <= b && b < info.end);
    return { servers: serving.length, rps: serving.reduce((sum, { info }) => sum + (info.inferenceRps || 0), 0) };
  });
  const top = Math.max(1, ...perBlock.map((b) => b.rps));
  // The weakest served block bounds what the swarm can route; unserved ones are flagged apart.
  const weakest = Math.min(...perBlock.filter((b) => b.servers > 0).map((b) => b.rps));
  lines.push("", "decode throughput per block (sum over its servers):");
  for (const [b, { servers, rps }] of perBlock.entries()) {
    const bar = servers === 0 ? "" : "█".repeat(Math.max(1, Math.round((rps / top) * barWidth)));
    const note = servers === 0 ? "NO SERVER: sessions cannot be routed" : rps === weakest ? "← weakest" : "";
    lines.push(
      `block ${String(b).padStart(String(numBlocks - 1).length)} ${bar.padEnd(barWidth)} ${fixed(rps, 0).padStart(7)} tok/s  ${servers} server${servers === 1 ? "" : "s"}  ${note}`.trimEnd(),
    );
  }
  return lines.join("\n");
}
