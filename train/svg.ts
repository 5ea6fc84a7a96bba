// Line charts as standalone SVG text with no dependencies, for the loss curves (training and
// validation loss against tokens) and the update-rank plot of a run.

/** One line of a chart. Points with a non-finite coordinate break the line into pieces. */
export interface Series {
  name: string;
  points: readonly (readonly [number, number])[];
  dashed?: boolean;
}

export interface LineChartOptions {
  title: string;
  xLabel: string;
  yLabel: string;
  series: readonly Series[];
  /** Size in pixels (SVG user units), 720 × 420 by default. */
  width?: number;
  height?: number;
  /** Logarithmic y axis, which needs every finite y to be positive. */
  logY?: boolean;
}

/** Error for chart input that cannot be drawn, with a one-line message. */
export class ChartError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ChartError";
  }
}

// matplotlib's default colour cycle ("tab10"). Series past the tenth get hues spaced by the
// golden angle, which keeps neighbours apart however many there are.
const PALETTE = [
  "#1f77b4",
  "#ff7f0e",
  "#2ca02c",
  "#d62728",
  "#9467bd",
  "#8c564b",
  "#e377c2",
  "#7f7f7f",
  "#bcbd22",
  "#17becf",
];

function seriesColour(index: number): string {
  if (index < PALETTE.length) return PALETTE[index];
  return `hsl(${((index - PALETTE.length) * 137.508) % 360 | 0}, 65%, 45%)`;
}

const FONT_SIZE = 12;
const TITLE_SIZE = 14;
// Average advance of a 12 px sans-serif character, to size the legend without measuring text.
const CHAR_WIDTH = 7;
const MIN_WIDTH = 240;
const MIN_HEIGHT = 160;

/** Escapes text for XML content and attribute values, and replaces characters XML 1.0 forbids. */
export function escapeXml(text: string): string {
  return text
    // deno-lint-ignore no-control-regex -- these are the characters XML 1.0 forbids.
    .replace(/[\u0000-\u0008\u000b\u000c\u000e-\u001f\ufffe\uffff]/g, "\ufffd")
    .replace(/&/g, "&amp;")
    .replace(/</g, "&lt;")
    .replace(/>/g, "&gt;")
    .replace(/"/g, "&quot;")
    .replace(/'/g, "&apos;");
}

// Removes floating-point noise such as 0.30000000000000004 from tick values.
function clean(value: number): number {
  return Number(value.toPrecision(12));
}

// The step among 1, 2 and 5 times a power of ten that splits `span` into about `target` parts.
function niceStep(span: number, target: number): number {
  const raw = span / target;
  const magnitude = 10 ** Math.floor(Math.log10(raw));
  const fraction = raw / magnitude;
  if (fraction < 1.5) return magnitude;
  if (fraction < 3) return 2 * magnitude;
  if (fraction < 7) return 5 * magnitude;
  return 10 * magnitude;
}

/**
 * Returns evenly spaced round ticks (steps of 1, 2 or 5 times a power of ten) from the
 * largest tick ≤ min to the smallest tick ≥ max, about `target` intervals apart.
 */
export function niceTicks(min: number, max: number, target = 5): number[] {
  if (!Number.isFinite(min) || !Number.isFinite(max) || min > max) {
    throw new ChartError(`axis range ${min}..${max} is invalid: pass finite min <= max`);
  }
  if (min === max) {
    const pad = Math.abs(min) > 0 ? Math.abs(min) * 0.1 : 1;
    return niceTicks(min - pad, max + pad, target);
  }
  const step = niceStep(max - min, target);
  const first = Math.floor(min / step);
  const last = Math.ceil(max / step);
  const ticks: number[] = [];
  for (let i = first; i <= last; i++) ticks.push(clean(i * step));
  return ticks;
}

/**
 * Returns ticks for a log axis over positive min..max: the values 1, 2 and 5 times a power
 * of ten, or only powers of ten when the range spans more than three decades. The first
 * tick is ≤ min and the last ≥ max.
 */
export function logTicks(min: number, max: number): number[] {
  if (!(min > 0) || !(max >= min) || !Number.isFinite(max)) {
    throw new ChartError(`log axis range ${min}..${max} is invalid: pass 0 < min <= max`);
  }
  const mantissas = Math.log10(max) - Math.log10(min) > 3 ? [1] : [1, 2, 5];
  const candidates: number[] = [];
  for (
    let exponent = Math.floor(Math.log10(min)) - 1;
    exponent <= Math.ceil(Math.log10(max));
    exponent++
  ) {
    for (const mantissa of mantissas) candidates.push(clean(mantissa * 10 ** exponent));
  }
  const below = candidates.filter((c) => c <= min);
  const above = candidates.filter((c) => c >= max);
  const lo = below[below.length - 1];
  const hi = above[0];
  const ticks = candidates.filter((c) => c >= lo && c <= hi);
  // A range inside one 1-2-5 interval, such as 3..4, would show only its two ends, so a
  // linear subdivision adds labels between them.
  if (ticks.length < 3) return niceTicks(lo, hi, 4).filter((t) => t > 0);
  return ticks;
}

const SI_PREFIXES: [number, string][] = [[1e12, "T"], [1e9, "G"], [1e6, "M"], [1e3, "k"]];

/**
 * Formats axis labels with one SI prefix per axis (k, M, G or T, chosen by the largest
 * tick), so token counts read 0.5M, 1M. Linear ticks get as many decimals as their step
 * needs, and log ticks three significant digits.
 */
export function formatTicks(ticks: readonly number[], log: boolean): string[] {
  const largest = Math.max(...ticks.map(Math.abs));
  const [scale, suffix] = SI_PREFIXES.find(([s]) => largest >= s) ?? [1, ""];
  const strip = (text: string) => text.includes(".") ? text.replace(/\.?0+$/, "") : text;
  if (log) {
    return ticks.map((t) => `${Number((t / scale).toPrecision(3))}${suffix}`);
  }
  const step = ticks.length > 1 ? Math.abs(ticks[1] - ticks[0]) / scale : 1;
  const decimals = Math.min(10, Math.max(0, -Math.floor(Math.log10(step) + 1e-9)));
  return ticks.map((t) => (t === 0 ? "0" : `${strip((t / scale).toFixed(decimals))}${suffix}`));
}

function round2(value: number): string {
  return (Math.round(value * 100) / 100).toString();
}

/**
 * Draws `series` as a line chart and returns the SVG document. Axes get round ticks with
 * grid lines, the legend lists the series in order in distinct colours, and every text is
 * escaped. Throws ChartError for a size below 240 × 160 or, with `logY`, a y ≤ 0.
 */
export function lineChart(opts: LineChartOptions): string {
  const width = opts.width ?? 720;
  const height = opts.height ?? 420;
  if (!Number.isFinite(width) || width < MIN_WIDTH) {
    throw new ChartError(`chart width ${width} is too small: use at least ${MIN_WIDTH}`);
  }
  if (!Number.isFinite(height) || height < MIN_HEIGHT) {
    throw new ChartError(`chart height ${height} is too small: use at least ${MIN_HEIGHT}`);
  }
  const logY = opts.logY ?? false;

  const xs: number[] = [];
  const ys: number[] = [];
  for (const series of opts.series) {
    for (const [x, y] of series.points) {
      if (!Number.isFinite(x) || !Number.isFinite(y)) continue;
      if (logY && y <= 0) {
        throw new ChartError(
          `series "${series.name}" has y = ${y} at x = ${x}, which a log axis cannot show: ` +
            "drop the point or pass logY: false",
        );
      }
      xs.push(x);
      ys.push(y);
    }
  }
  const xTicks = xs.length ? niceTicks(Math.min(...xs), Math.max(...xs), 6) : niceTicks(0, 1, 5);
  let yTicks: number[];
  if (ys.length === 0) yTicks = logY ? [1, 10] : niceTicks(0, 1, 5);
  else if (logY) yTicks = logTicks(Math.min(...ys), Math.max(...ys));
  else yTicks = niceTicks(Math.min(...ys), Math.max(...ys), 5);
  const xLabels = formatTicks(xTicks, false);
  const yLabels = formatTicks(yTicks, logY);

  // Plot area: room for the title above, tick labels and the axis label below and to the
  // left, and the legend on the right.
  const longestName = Math.max(0, ...opts.series.map((s) => s.name.length));
  const legendWidth = opts.series.length ? Math.min(width * 0.4, 36 + longestName * CHAR_WIDTH) : 0;
  const longestYLabel = Math.max(...yLabels.map((l) => l.length));
  const left = 30 + longestYLabel * CHAR_WIDTH;
  const right = width - 16 - legendWidth;
  const top = 40;
  const bottom = height - 48;

  const xMin = xTicks[0];
  const xMax = xTicks[xTicks.length - 1];
  const yTransform = logY ? Math.log10 : (y: number) => y;
  const yMin = yTransform(yTicks[0]);
  const yMax = yTransform(yTicks[yTicks.length - 1]);
  const px = (x: number) => left + ((x - xMin) / (xMax - xMin)) * (right - left);
  const py = (y: number) => bottom - ((yTransform(y) - yMin) / (yMax - yMin)) * (bottom - top);

  const out: string[] = [];
  out.push(
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" ` +
      `viewBox="0 0 ${width} ${height}" font-family="sans-serif" font-size="${FONT_SIZE}">`,
  );
  out.push(`<rect x="0" y="0" width="${width}" height="${height}" fill="#ffffff"/>`);
  out.push(
    `<text x="${round2(width / 2)}" y="24" text-anchor="middle" font-size="${TITLE_SIZE}" ` +
      `font-weight="bold">${escapeXml(opts.title)}</text>`,
  );

  out.push(`<g class="grid" stroke="#e6e6e6" stroke-width="1">`);
  for (const t of xTicks) {
    const x = round2(px(t));
    out.push(`<line x1="${x}" y1="${top}" x2="${x}" y2="${bottom}"/>`);
  }
  for (const t of yTicks) {
    const y = round2(py(t));
    out.push(`<line x1="${round2(left)}" y1="${y}" x2="${round2(right)}" y2="${y}"/>`);
  }
  out.push("</g>");

  out.push(`<g class="axes" stroke="#333333" stroke-width="1">`);
  out.push(`<line x1="${round2(left)}" y1="${bottom}" x2="${round2(right)}" y2="${bottom}"/>`);
  out.push(`<line x1="${round2(left)}" y1="${top}" x2="${round2(left)}" y2="${bottom}"/>`);
  out.push("</g>");

  out.push(`<g class="x-ticks" text-anchor="middle" fill="#333333">`);
  xTicks.forEach((t, i) => {
    out.push(`<text x="${round2(px(t))}" y="${bottom + 16}">${escapeXml(xLabels[i])}</text>`);
  });
  out.push("</g>");
  out.push(`<g class="y-ticks" text-anchor="end" fill="#333333">`);
  yTicks.forEach((t, i) => {
    out.push(
      `<text x="${round2(left - 6)}" y="${round2(py(t) + 4)}">${escapeXml(yLabels[i])}</text>`,
    );
  });
  out.push("</g>");

  const xLabelX = round2((left + right) / 2);
  out.push(
    `<text class="x-label" x="${xLabelX}" y="${height - 12}" text-anchor="middle">` +
      `${escapeXml(opts.xLabel)}</text>`,
  );
  const yLabelY = round2((top + bottom) / 2);
  out.push(
    `<text class="y-label" x="16" y="${yLabelY}" text-anchor="middle" ` +
      `transform="rotate(-90 16 ${yLabelY})">${escapeXml(opts.yLabel)}</text>`,
  );

  out.push(
    `<g class="series" fill="none" stroke-width="1.5" stroke-linejoin="round" stroke-linecap="round">`,
  );
  opts.series.forEach((series, i) => {
    const dash = series.dashed ? ` stroke-dasharray="6 4"` : "";
    out.push(
      `<path d="${pathData(series, px, py)}" stroke="${seriesColour(i)}"${dash}/>`,
    );
  });
  out.push("</g>");

  out.push(`<g class="legend" fill="#333333">`);
  opts.series.forEach((series, i) => {
    const y = top + 8 + i * 18;
    const x = round2(right + 16);
    const dash = series.dashed ? ` stroke-dasharray="6 4"` : "";
    out.push(
      `<line x1="${x}" y1="${y}" x2="${round2(right + 40)}" y2="${y}" ` +
        `stroke="${seriesColour(i)}" stroke-width="2"${dash}/>`,
    );
    out.push(`<text x="${round2(right + 46)}" y="${y + 4}">${escapeXml(series.name)}</text>`);
  });
  out.push("</g>");
  out.push("</svg>");
  return out.join("\n") + "\n";
}

// "M x,y L x,y …", starting a new piece after each non-finite point. A piece of one point
// gets a zero-length segment, which round line caps draw as a dot.
function pathData(series: Series, px: (x: number) => number, py: (y: number) => number): string {
  const commands: string[] = [];
  let pieceLength = 0;
  const endPiece = () => {
    if (pieceLength === 1) commands.push("h0");
    pieceLength = 0;
  };
  for (const [x, y] of series.points) {
    if (!Number.isFinite(x) || !Number.isFinite(y)) {
      endPiece();
      continue;
    }
    commands.push(`${pieceLength === 0 ? "M" : "L"}${round2(px(x))},${round2(py(y))}`);
    pieceLength++;
  }
  endPiece();
  return commands.join(" ");
}
