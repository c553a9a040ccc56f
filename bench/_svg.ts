// Grouped bar charts as standalone SVG, for the benchmarks' pictures (one panel per measure,
// one group per configuration, one bar per series).

export interface BarPanel {
  title: string;
  /** Group labels along the x axis. */
  groups: string[];
  /** values[series][group]; NaN leaves a gap. */
  values: number[][];
}

export interface BarChart {
  panels: BarPanel[];
  series: string[];
  footer: string;
}

const COLORS = ["#3b6fd8", "#e8833a", "#4aa564", "#9b59b6"];

export function groupedBarChartSvg({ panels, series, footer }: BarChart): string {
  const W = 420;
  const H = 300;
  const pad = { l: 56, r: 16, t: 40, b: 40 };
  const esc = (s: string) => s.replace(/&/g, "&amp;").replace(/</g, "&lt;");
  const fmt = (v: number) => (v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2));
  const out: string[] = [];
  const totalW = W * panels.length;
  const totalH = H + 50;
  out.push(
    `<svg xmlns="http://www.w3.org/2000/svg" width="${totalW}" height="${totalH}" viewBox="0 0 ${totalW} ${totalH}" font-family="sans-serif" font-size="12">`,
  );
  out.push(`<rect width="100%" height="100%" fill="white"/>`);
  panels.forEach((p, pi) => {
    const x0 = pi * W;
    const plotW = W - pad.l - pad.r;
    const plotH = H - pad.t - pad.b;
    const max = Math.max(1e-9, ...p.values.flat().filter(Number.isFinite));
    const step = niceStep(max / 5);
    const top = Math.ceil(max / step) * step;
    const y = (v: number) => pad.t + plotH - (v / top) * plotH;
    out.push(`<text x="${x0 + W / 2}" y="22" text-anchor="middle" font-size="14" font-weight="bold">${esc(p.title)}</text>`);
    const tickDigits = Math.max(0, -Math.floor(Math.log10(step)));
    for (let v = 0; v <= top + 1e-9; v += step) {
      out.push(`<line x1="${x0 + pad.l}" x2="${x0 + W - pad.r}" y1="${y(v).toFixed(1)}" y2="${y(v).toFixed(1)}" stroke="#ddd"/>`);
      out.push(`<text x="${x0 + pad.l - 6}" y="${(y(v) + 4).toFixed(1)}" text-anchor="end" fill="#555">${v.toFixed(tickDigits)}</text>`);
    }
    const groupW = plotW / p.groups.length;
    const barW = Math.min(48, (groupW * 0.7) / series.length);
    p.groups.forEach((g, gi) => {
      const gx = x0 + pad.l + gi * groupW + (groupW - barW * series.length) / 2;
      series.forEach((_, si) => {
        const v = p.values[si]![gi]!;
        if (!Number.isFinite(v)) return;
        const bx = gx + si * barW;
        out.push(
          `<rect x="${bx.toFixed(1)}" y="${y(v).toFixed(1)}" width="${(barW - 2).toFixed(1)}" height="${(pad.t + plotH - y(v)).toFixed(1)}" fill="${COLORS[si % COLORS.length]}"/>`,
        );
        out.push(`<text x="${(bx + barW / 2 - 1).toFixed(1)}" y="${(y(v) - 4).toFixed(1)}" text-anchor="middle" font-size="10">${fmt(v)}</text>`);
      });
      out.push(`<text x="${(x0 + pad.l + gi * groupW + groupW / 2).toFixed(1)}" y="${pad.t + plotH + 18}" text-anchor="middle">${esc(g)}</text>`);
    });
    out.push(`<line x1="${x0 + pad.l}" x2="${x0 + W - pad.r}" y1="${pad.t + plotH}" y2="${pad.t + plotH}" stroke="#333"/>`);
  });
  series.forEach((l, i) => {
    const lx = 20 + i * 130;
    out.push(`<rect x="${lx}" y="${H + 8}" width="12" height="12" fill="${COLORS[i % COLORS.length]}"/>`);
    out.push(`<text x="${lx + 18}" y="${H + 18}">${esc(l)}</text>`);
  });
  out.push(`<text x="${totalW - 10}" y="${H + 38}" text-anchor="end" fill="#555" font-size="11">${esc(footer)}</text>`);
  out.push(`</svg>`);
  return `${out.join("\n")}\n`;
}

function niceStep(raw: number): number {
  const p = 10 ** Math.floor(Math.log10(raw));
  const m = raw / p;
  return (m <= 1 ? 1 : m <= 2 ? 2 : m <= 5 ? 5 : 10) * p;
}
