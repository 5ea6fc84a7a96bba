// deno-lint-ignore-file no-import-prefix -- train/ pins its npm dependencies inline, not in the import map.
import assert from "node:assert/strict";
import { XMLParser, XMLValidator } from "npm:fast-xml-parser@4.5.3";
import { ChartError, formatTicks, lineChart, logTicks, niceTicks, type Series } from "./svg.ts";

// fast-xml-parser's preserveOrder output: one object per node, keyed by its tag name, with
// attributes under ":@" and text nodes as {"#text": ...}.
type XmlNode = Record<string, unknown>;

interface Element {
  tag: string;
  attrs: Record<string, string>;
  children: XmlNode[];
}

function parseSvg(svg: string): XmlNode[] {
  const valid = XMLValidator.validate(svg);
  assert.equal(valid, true, JSON.stringify(valid));
  const parser = new XMLParser({
    preserveOrder: true,
    ignoreAttributes: false,
    attributeNamePrefix: "",
    parseAttributeValue: false,
    parseTagValue: false,
    trimValues: false,
  });
  return parser.parse(svg) as XmlNode[];
}

function toElement(node: XmlNode): Element | null {
  const tag = Object.keys(node).find((key) => key !== ":@" && key !== "#text");
  if (tag === undefined) return null;
  return {
    tag,
    attrs: (node[":@"] ?? {}) as Record<string, string>,
    children: node[tag] as XmlNode[],
  };
}

// Every element named `tag` below `nodes`, in document order.
function findAll(nodes: XmlNode[], tag: string): Element[] {
  const found: Element[] = [];
  for (const node of nodes) {
    const element = toElement(node);
    if (element === null) continue;
    if (element.tag === tag) found.push(element);
    found.push(...findAll(element.children, tag));
  }
  return found;
}

function textOf(element: Element): string {
  return element.children.map((child) => String(child["#text"] ?? "")).join("");
}

function groupByClass(nodes: XmlNode[], name: string): Element {
  const group = findAll(nodes, "g").find((g) => g.attrs.class === name);
  assert.ok(group, `no <g class="${name}">`);
  return group;
}

const LOSS_SERIES: Series[] = [
  { name: "train", points: [[0, 10.9], [4096, 7.5], [8192, 6.1], [12288, 5.4]] },
  { name: "val", points: [[0, 11], [8192, 6.3]], dashed: true },
  { name: "bpt r=32", points: [[0, 10.8], [12288, 5.2]] },
];

Deno.test("lineChart is an svg document", () => {
  const svg = lineChart({
    title: "loss",
    xLabel: "tokens",
    yLabel: "cross-entropy",
    series: LOSS_SERIES,
    width: 640,
    height: 360,
  });
  const nodes = parseSvg(svg);
  const roots = nodes.map(toElement).filter((e) => e !== null);
  assert.equal(roots.length, 1);
  assert.equal(roots[0].tag, "svg");
  assert.equal(roots[0].attrs.xmlns, "http://www.w3.org/2000/svg");
  assert.equal(roots[0].attrs.viewBox, "0 0 640 360");
  assert.equal(roots[0].attrs.width, "640");
  assert.equal(roots[0].attrs.height, "360");
});

Deno.test("lineChart draws one path per series", () => {
  const nodes = parseSvg(
    lineChart({ title: "loss", xLabel: "tokens", yLabel: "loss", series: LOSS_SERIES }),
  );
  const paths = findAll(nodes, "path");
  assert.equal(paths.length, 3);
  assert.equal(findAll(nodes, "polyline").length, 0);

  const colours = paths.map((p) => p.attrs.stroke);
  assert.equal(new Set(colours).size, 3);
  assert.equal(paths[0].attrs["stroke-dasharray"], undefined);
  assert.equal(paths[1].attrs["stroke-dasharray"], "6 4");
  // Four points are one move and three line segments.
  assert.equal(paths[0].attrs.d.match(/[ML]/g)?.join(""), "MLLL");

  const legendTexts = findAll([{ g: groupByClass(nodes, "legend").children }], "text");
  assert.deepEqual(legendTexts.map(textOf), ["train", "val", "bpt r=32"]);
  const legendLines = findAll([{ g: groupByClass(nodes, "legend").children }], "line");
  assert.deepEqual(legendLines.map((l) => l.attrs.stroke), colours);
});

Deno.test("lineChart coordinates stay in viewBox", () => {
  const width = 500;
  const height = 300;
  const series: Series[] = [
    { name: "a", points: [[-3, 1e-3], [7, 250], [1e6, 42]] },
    { name: "b", points: [[0.5, -20], [2, 3]] },
  ];
  const nodes = parseSvg(
    lineChart({ title: "t", xLabel: "x", yLabel: "y", series, width, height }),
  );

  for (const path of findAll(nodes, "path")) {
    const numbers = path.attrs.d.match(/-?\d+(\.\d+)?/g)!.map(Number);
    assert.equal(numbers.length % 2, 0);
    for (let i = 0; i < numbers.length; i += 2) {
      const x = numbers[i];
      const y = numbers[i + 1];
      assert.ok(x >= 0, `path x ${x} < 0`);
      assert.ok(x <= width, `path x ${x} > ${width}`);
      assert.ok(y >= 0, `path y ${y} < 0`);
      assert.ok(y <= height, `path y ${y} > ${height}`);
    }
  }
  for (const element of [...findAll(nodes, "line"), ...findAll(nodes, "text")]) {
    for (const key of ["x", "x1", "x2"]) {
      if (element.attrs[key] === undefined) continue;
      const x = Number(element.attrs[key]);
      assert.ok(x >= 0, `${element.tag} ${key}=${x} < 0`);
      assert.ok(x <= width, `${element.tag} ${key}=${x} > ${width}`);
    }
    for (const key of ["y", "y1", "y2"]) {
      if (element.attrs[key] === undefined) continue;
      const y = Number(element.attrs[key]);
      assert.ok(y >= 0, `${element.tag} ${key}=${y} < 0`);
      assert.ok(y <= height, `${element.tag} ${key}=${y} > ${height}`);
    }
  }
});

Deno.test("lineChart maps range ends to axes", () => {
  // x 0..10 and y 0..10 are already round, so the axes span exactly the data: (0, 0) lies
  // where the axes meet, and (10, 10) at the top right corner of the plot area.
  const nodes = parseSvg(lineChart({
    title: "t",
    xLabel: "x",
    yLabel: "y",
    series: [{ name: "diagonal", points: [[0, 0], [10, 10]] }],
  }));
  const [xAxis, yAxis] = findAll([{ g: groupByClass(nodes, "axes").children }], "line");
  const left = xAxis.attrs.x1;
  const right = xAxis.attrs.x2;
  const top = yAxis.attrs.y1;
  const bottom = yAxis.attrs.y2;
  assert.equal(xAxis.attrs.y1, bottom);
  assert.equal(yAxis.attrs.x1, left);
  assert.equal(findAll(nodes, "path")[0].attrs.d, `M${left},${bottom} L${right},${top}`);

  const xTicks = findAll([{ g: groupByClass(nodes, "x-ticks").children }], "text");
  assert.deepEqual(xTicks.map(textOf), ["0", "2", "4", "6", "8", "10"]);
  const yTicks = findAll([{ g: groupByClass(nodes, "y-ticks").children }], "text");
  assert.deepEqual(yTicks.map(textOf), ["0", "2", "4", "6", "8", "10"]);
});

Deno.test("lineChart escapes text", () => {
  const title = `loss < 3 & "bpt" 'r'`;
  const name = "<script>alert(1)</script>";
  const svg = lineChart({
    title,
    xLabel: "tokens & steps",
    yLabel: "y\u0001",
    series: [{ name, points: [[0, 1], [1, 2]] }],
  });
  assert.ok(!svg.includes(title));
  assert.ok(!svg.includes("<script>"));
  assert.ok(svg.includes("loss &lt; 3 &amp; &quot;bpt&quot; &apos;r&apos;"));

  const nodes = parseSvg(svg);
  const texts = findAll(nodes, "text").map(textOf);
  assert.ok(texts.includes(title));
  assert.ok(texts.includes(name));
  assert.ok(texts.includes("tokens & steps"));
  // U+0001 is not allowed in XML 1.0, so it becomes U+FFFD.
  assert.ok(texts.includes("y\ufffd"));
});

Deno.test("lineChart breaks lines at gaps", () => {
  const nodes = parseSvg(lineChart({
    title: "t",
    xLabel: "x",
    yLabel: "y",
    series: [{ name: "nan", points: [[0, 1], [1, Number.NaN], [2, 3], [3, 4]] }],
  }));
  // The point before the gap is a piece of its own: a move and a zero-length segment.
  const commands = findAll(nodes, "path")[0].attrs.d.split(" ").map((c) => c[0]);
  assert.deepEqual(commands, ["M", "h", "M", "L"]);
});

Deno.test("lineChart colours many series", () => {
  const series = Array.from({ length: 14 }, (_, i) => ({
    name: `s${i}`,
    points: [[0, i], [1, i + 1]] as [number, number][],
  }));
  const nodes = parseSvg(lineChart({ title: "t", xLabel: "x", yLabel: "y", series }));
  const colours = findAll(nodes, "path").map((p) => p.attrs.stroke);
  assert.equal(colours.length, 14);
  assert.equal(new Set(colours).size, 14);
});

Deno.test("lineChart rejects bad input", () => {
  const base = { title: "t", xLabel: "x", yLabel: "y" };
  assert.throws(
    () => lineChart({ ...base, series: [{ name: "a", points: [[0, 0]] }], logY: true }),
    ChartError,
  );
  assert.throws(() => lineChart({ ...base, series: [], width: 100 }), ChartError);
  assert.throws(() => lineChart({ ...base, series: [], height: Number.NaN }), ChartError);
});

Deno.test("lineChart empty series list", () => {
  const nodes = parseSvg(lineChart({ title: "t", xLabel: "x", yLabel: "y", series: [] }));
  assert.equal(findAll(nodes, "path").length, 0);
  assert.equal(findAll([{ g: groupByClass(nodes, "legend").children }], "text").length, 0);
});

Deno.test("niceTicks round steps", () => {
  // Span 1e6 / 6 ≈ 166,667 rounds to a step of 2e5.
  assert.deepEqual(niceTicks(0, 1e6, 6), [0, 200000, 400000, 600000, 800000, 1000000]);
  // Span 7.7 / 5 = 1.54 rounds to a step of 2, from 2 ≤ 3.2 to 12 ≥ 10.9.
  assert.deepEqual(niceTicks(3.2, 10.9, 5), [2, 4, 6, 8, 10, 12]);
  // Span 0.2 / 5 = 0.04 rounds to 0.05, and the values carry no floating-point noise.
  assert.deepEqual(niceTicks(0.1, 0.3, 5), [0.1, 0.15, 0.2, 0.25, 0.3]);
  // A single value gets ±10 % around it: 4.5..5.5, step 0.2.
  assert.deepEqual(niceTicks(5, 5, 5), [4.4, 4.6, 4.8, 5, 5.2, 5.4, 5.6]);
  assert.throws(() => niceTicks(2, 1), ChartError);
});

Deno.test("logTicks decades and 1-2-5", () => {
  assert.deepEqual(logTicks(3.2, 10.9), [2, 5, 10, 20]);
  // More than three decades: powers of ten only.
  assert.deepEqual(logTicks(1e-3, 50), [0.001, 0.01, 0.1, 1, 10, 100]);
  // Inside one 1-2-5 interval the ends 2 and 5 get linear ticks between them.
  assert.deepEqual(logTicks(3.1, 3.9), [2, 3, 4, 5]);
  assert.throws(() => logTicks(0, 1), ChartError);
});

Deno.test("formatTicks SI prefixes", () => {
  assert.deepEqual(formatTicks([0, 5e5, 1e6, 1.5e6], false), ["0", "0.5M", "1M", "1.5M"]);
  assert.deepEqual(formatTicks([0, 2000, 4000], false), ["0", "2k", "4k"]);
  assert.deepEqual(formatTicks([0.1, 0.15, 0.2], false), ["0.1", "0.15", "0.2"]);
  assert.deepEqual(formatTicks([2, 5, 10, 20], true), ["2", "5", "10", "20"]);
  assert.deepEqual(formatTicks([500, 1000, 2000], true), ["0.5k", "1k", "2k"]);
});
