// Error distributions as a standalone SVG for bench/verify.ts: one row per distribution (honest
// nodes per codec, each adversary mode), a histogram over a log10 axis of the relative L2 error of
// a row against its recomputation (bar heights on a log scale of the count, so a tail of single
// rows shows), its min / median / max marked, and the tolerance as a line.

export interface Distribution {
  label: string;
  /** Errors; 0 and anything under the axis floor are drawn in the first bin. */
  values: number[];
  kind: "honest" | "adversary";
}

export interface DistributionChart {
  title: string;
  rows: Distribution[];
  tolerance: number;
  footer: string;
}

const COLOR = { honest: "#3b6fd8", adversary: "#e8833a" };

export function errorDistributionSvg({ title, rows, tolerance, footer }: DistributionChart): string {
  const finite = rows.flatMap((r) => r.values).filter((v) => v > 0 && Number.isFinite(v));
  const lo = Math.floor(Math.log10(Math.min(tolerance, ...finite, 1e-3)));
  const hi = Math.ceil(Math.log10(Math.max(tolerance, ...finite, 1)));
  const floor = Math.max(lo, -10);
  const pad = { l: 200, r: 30, t: 50, b: 60 };
  const rowH = 46;
  const W = 980;
  const plotW = W - pad.l - pad.r;
  const H = pad.t + rows.length * rowH + pad.b;
  const x = (log: number) => pad.l + ((Math.max(floor, Math.min(hi, log)) - floor) / (hi - floor)) * plotW;
  const lg = (v: number) => (v > 0 ? (Number.isFinite(v) ? Math.log10(v) : hi) : floor);
  const binsPerDecade = 4;
  const nBins = (hi - floor) * binsPerDecade;
  const esc = (s: string) => s.replace(/&/g, "&amp;").replace(/</g, "&lt;");
  const out: string[] = [];
  out.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif" font-size="12">`);
  out.push(`<rect width="100%" height="100%" fill="white"/>`);
  out.push(`<text x="${W / 2}" y="24" text-anchor="middle" font-size="15" font-weight="bold">${esc(title)}</text>`);
  for (let d = floor; d <= hi; d++) {
    out.push(`<line x1="${x(d).toFixed(1)}" x2="${x(d).toFixed(1)}" y1="${pad.t - 6}" y2="${H - pad.b}" stroke="#e4e4e4"/>`);
    out.push(`<text x="${x(d).toFixed(1)}" y="${H - pad.b + 16}" text-anchor="middle" fill="#555">${d === floor ? `0, ≤1e${d}` : `1e${d}`}</text>`);
  }
  rows.forEach((r, i) => {
    const y0 = pad.t + i * rowH;
    const base = y0 + rowH - 8;
    const counts = new Array<number>(nBins).fill(0);
    for (const v of r.values) counts[Math.min(nBins - 1, Math.max(0, Math.floor((lg(v) - floor) * binsPerDecade)))]!++;
    const max = Math.max(1, ...counts);
    const bw = plotW / nBins;
    counts.forEach((n, b) => {
      if (!n) return;
      // Heights on a log scale of the count, so that single rows in a tail stay visible.
      const h = Math.max(1.5, ((rowH - 14) * Math.log1p(n)) / Math.log1p(max));
      out.push(
        `<rect x="${(pad.l + b * bw).toFixed(1)}" y="${(base - h).toFixed(1)}" width="${(bw - 1).toFixed(1)}" height="${h.toFixed(1)}" fill="${COLOR[r.kind]}" opacity="0.8"/>`,
      );
    });
    out.push(`<line x1="${pad.l}" x2="${W - pad.r}" y1="${base}" y2="${base}" stroke="#999"/>`);
    const sorted = [...r.values].sort((a, b) => a - b);
    if (sorted.length) {
      const med = sorted[Math.floor((sorted.length - 1) / 2)]!;
      for (const [v, mark] of [
        [sorted[0]!, "#000"],
        [med, "#c00"],
        [sorted.at(-1)!, "#000"],
      ] as const) {
        out.push(`<line x1="${x(lg(v)).toFixed(1)}" x2="${x(lg(v)).toFixed(1)}" y1="${base - 4}" y2="${base + 4}" stroke="${mark}" stroke-width="2"/>`);
      }
    }
    out.push(`<text x="${pad.l - 8}" y="${base - 12}" text-anchor="end">${esc(r.label)}</text>`);
    out.push(`<text x="${pad.l - 8}" y="${base + 1}" text-anchor="end" fill="#777" font-size="10">${sorted.length} rows</text>`);
  });
  const tx = x(Math.log10(tolerance));
  out.push(`<line x1="${tx.toFixed(1)}" x2="${tx.toFixed(1)}" y1="${pad.t - 10}" y2="${H - pad.b}" stroke="#c00" stroke-dasharray="5,4" stroke-width="1.5"/>`);
  out.push(`<text x="${(tx + 4).toFixed(1)}" y="${pad.t - 14}" fill="#c00">tolerance ${tolerance.toExponential(0)}</text>`);
  out.push(
    `<text x="${pad.l + plotW / 2}" y="${H - pad.b + 34}" text-anchor="middle">relative L2 error of a row against its recomputation (log scale; bar height: log(1 + rows); ticks: min, median (red), max)</text>`,
  );
  out.push(`<rect x="20" y="${H - 22}" width="12" height="12" fill="${COLOR.honest}"/><text x="38" y="${H - 12}">honest</text>`);
  out.push(`<rect x="100" y="${H - 22}" width="12" height="12" fill="${COLOR.adversary}"/><text x="118" y="${H - 12}">adversary (cheated steps)</text>`);
  out.push(`<text x="${W - 10}" y="${H - 12}" text-anchor="end" fill="#555" font-size="11">${esc(footer)}</text>`);
  out.push(`</svg>`);
  return `${out.join("\n")}\n`;
}
