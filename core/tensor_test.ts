import assert from "node:assert/strict";
import { cast } from "./ops/cast.ts";
import { add, fillInPlace } from "./ops/elementwise.ts";
import { rand, randn } from "./random.ts";
import {
  bf16ToF32,
  empty,
  f16ToF32,
  f32ToBf16,
  f32ToF16,
  fromArray,
  initGpu,
  ledger,
  ShapeError,
  zeros,
} from "./tensor.ts";
import { GpuError } from "./gpu.ts";
import { seededArray } from "./testing.ts";

const g = await initGpu();

// [f32 bits, bf16 bits]: derived by hand from the bf16 definition (the top 16
// bits of an f32, rounded to nearest with ties to even).
const BF16_CASES: [number, number][] = [
  [0x00000000, 0x0000], // +0
  [0x80000000, 0x8000], // -0
  [0x3f800000, 0x3f80], // 1.0
  [0x3f808000, 0x3f80], // 1 + 2^-8: tie, 0x3f80 is even, round down
  [0x3f818000, 0x3f82], // tie with odd 0x3f81: round up
  [0x3f808001, 0x3f81], // just above the tie
  [0x00010000, 0x0001], // smallest bf16 subnormal
  [0x00018000, 0x0002], // subnormal tie to even (up)
  [0x00008000, 0x0000], // subnormal tie to even (down to +0)
  [0x7f7f0000, 0x7f7f], // bf16 max finite
  [0x7f7fffff, 0x7f80], // f32 max finite rounds to +Inf
  [0x7f800000, 0x7f80], // +Inf
  [0xff800000, 0xff80], // -Inf
  [0x7fc00000, 0x7fc0], // quiet NaN
  [0x7f800001, 0x7fc0], // signalling NaN whose payload is in the dropped bits stays NaN
  [0xffc12345, 0xffc1], // negative NaN keeps its sign
  [0xc0490fdb, 0xc049], // -π
];

Deno.test("bf16 rounding on CPU matches reference bits", () => {
  const f = new Float32Array(1);
  const u = new Uint32Array(f.buffer);
  for (const [bits, want] of BF16_CASES) {
    u[0] = bits;
    assert.equal(f32ToBf16(f[0]), want, `0x${bits.toString(16)}`);
  }
});

Deno.test("bf16 cast on GPU matches reference bits", async () => {
  const src = new Uint32Array(BF16_CASES.map(([b]) => b));
  const x = fromArray(new Float32Array(src.buffer), [src.length]);
  const words = new Uint16Array((await cast(x, "bf16").toBytes()).buffer);
  BF16_CASES.forEach(([bits, want], i) => {
    assert.equal(words[i], want, `0x${bits.toString(16)} → 0x${words[i].toString(16)}`);
  });
});

Deno.test("bf16 round trip through f32 is exact", async () => {
  const bits = new Uint16Array([0x0000, 0x8000, 0x3f80, 0x0001, 0x7f7f, 0x7f80, 0xff80, 0xc049]);
  const t = fromArray(bits, [bits.length], { dtype: "bf16" });
  const f = await cast(t, "f32").toArray();
  bits.forEach((b, i) => assert.equal(f32ToBf16(f[i]), b));
  bits.forEach((b, i) => assert.equal(f[i], bf16ToF32(b)));
});

Deno.test("f16 cast matches IEEE half reference", async () => {
  if (!g.hasF16) return;
  // [value, half bits] from the IEEE 754 binary16 definition.
  const cases: [number, number][] = [
    [1, 0x3c00],
    [-2, 0xc000],
    [65504, 0x7bff],
    [2 ** -24, 0x0001],
    [
      Infinity,
      0x7c00,
    ],
    [0.1, 0x2e66],
  ];
  for (const [v, bits] of cases) assert.equal(f32ToF16(v), bits);
  const x = fromArray(cases.map(([v]) => v), [cases.length]);
  const words = new Uint16Array((await cast(x, "f16").toBytes()).buffer);
  cases.forEach(([v, bits], i) => assert.equal(words[i], bits, `${v}`));
  cases.forEach(([v, bits]) => assert.equal(f16ToF32(bits), v === 0.1 ? f16ToF32(0x2e66) : v));
});

Deno.test("randn is seeded and roughly standard normal", async () => {
  const a = await randn([4097], { seed: 42 }).toArray();
  const b = await randn([4097], { seed: 42 }).toArray();
  const c = await randn([4097], { seed: 43 }).toArray();
  assert.deepEqual(a, b);
  assert.notDeepEqual(a, c);
  const mean = a.reduce((s, x) => s + x, 0) / a.length;
  const variance = a.reduce((s, x) => s + (x - mean) ** 2, 0) / a.length;
  // 4,097 samples: the standard error of the mean is 1/64, of the variance ~0.022.
  assert.ok(Math.abs(mean) < 0.07, `mean ${mean}`);
  assert.ok(Math.abs(variance - 1) < 0.1, `variance ${variance}`);
  const u = await rand([1000], { seed: 1, low: -2, high: 3 }).toArray();
  assert.ok(u.every((x) => x >= -2 && x < 3));
  const bf = await randn([100], { seed: 42, dtype: "bf16" }).toArray();
  bf.forEach((x, i) => assert.equal(x, bf16ToF32(f32ToBf16(a[i]))));
});

Deno.test("allocation above maxBufferSize names size and limit", () => {
  const limit = g.limits.maxBufferSize;
  assert.throws(() => empty([Math.floor(limit / 4) + 1024]), (e: Error) => {
    assert.ok(e instanceof GpuError);
    assert.match(e.message, new RegExp(`${limit}`));
    assert.match(e.message, /maxBufferSize/);
    return true;
  });
});

Deno.test("shape mismatch names both shapes and the op", () => {
  assert.throws(() => add(zeros([2, 3]), zeros([4])), (e: Error) => {
    assert.ok(e instanceof ShapeError);
    assert.match(e.message, /^add: .*2x3.*4/);
    return true;
  });
});

Deno.test("binding split matches the unsplit result", async () => {
  const n = 5000;
  const a = seededArray(n, 1);
  const b = seededArray(n, 2);
  const whole = await add(fromArray(a, [n]), fromArray(b, [n])).toArray();
  const saved = g.bindingLimit;
  try {
    g.bindingLimit = 1024;
    const before = g.dispatchCount;
    const split = await add(fromArray(a, [n]), fromArray(b, [n])).toArray();
    assert.ok(g.dispatchCount - before > 10, "the add was not split");
    assert.deepEqual(split, whole);
    const bf = fromArray(a, [n], { dtype: "bf16" });
    const back = await cast(cast(fromArray(a, [n]), "bf16"), "f32").toArray();
    assert.deepEqual(back, await cast(bf, "f32").toArray());
  } finally {
    g.bindingLimit = saved;
  }
});

Deno.test("ledger tracks live bytes per class", async () => {
  const before = ledger.live.parameters;
  const t = zeros([10, 10], { memoryClass: "parameters", dtype: "bf16" });
  fillInPlace(zeros([1]), 0);
  assert.equal(ledger.live.parameters - before, 200);
  t.dispose();
  assert.equal(ledger.live.parameters, before);
  await g.sync();
});

Deno.test("GPU validation error names the op", async () => {
  const t = zeros([4]);
  g.dispatch({
    label: "broken-op(4)",
    code: "@compute @workgroup_size(1) fn main() { let x: u32 = 1.5; }",
    buffers: [t.buffer],
    workgroups: [1],
  });
  await assert.rejects(() => g.sync(), (e: Error) => {
    assert.ok(e instanceof GpuError);
    assert.match(e.message, /broken-op\(4\)/);
    return true;
  });
});
