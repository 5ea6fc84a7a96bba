import assert from "node:assert/strict";
import {
  bf16ToF32,
  f16ToF32,
  f32ToBf16,
  f32ToF16,
  fromArray,
  gpu,
  initGpu,
  type Tensor,
  type TensorOptions,
  writeBytes,
} from "../core/tensor.ts";
import { assertClose, dispatchLabels, seededArray } from "../core/testing.ts";
import { AdamW, type AdamWOptions } from "./adamw.ts";
import { GradNormClip } from "./clip.ts";

await initGpu();

// ---- CPU reference: torch.optim.AdamW's update in float64 ----

interface RefHyper {
  b1: number;
  b2: number;
  eps: number;
  wd: number;
}

const HYPER: RefHyper = { b1: 0.9, b2: 0.95, eps: 1e-8, wd: 0.1 };

class RefAdamW {
  p: Float64Array;
  m: Float64Array;
  v: Float64Array;
  t = 0;

  constructor(init: ArrayLike<number>, readonly decay: boolean, readonly h: RefHyper = HYPER) {
    this.p = Float64Array.from(init);
    this.m = new Float64Array(init.length);
    this.v = new Float64Array(init.length);
  }

  // `stateRound` models a 16-bit state dtype: the update uses the unrounded
  // values and only the stored m and v are rounded, as the kernel does.
  step(g: ArrayLike<number>, lr: number, scale = 1, stateRound?: (x: number) => number) {
    const { b1, b2, eps, wd } = this.h;
    this.t++;
    const bc1 = 1 - b1 ** this.t;
    const bc2 = 1 - b2 ** this.t;
    for (let i = 0; i < this.p.length; i++) {
      const gi = g[i] * scale;
      let p = this.p[i];
      if (this.decay) p *= 1 - lr * wd;
      const m = b1 * this.m[i] + (1 - b1) * gi;
      const v = b2 * this.v[i] + (1 - b2) * gi * gi;
      this.p[i] = p - (lr / bc1) * m / (Math.sqrt(v) / Math.sqrt(bc2) + eps);
      this.m[i] = stateRound ? stateRound(m) : m;
      this.v[i] = stateRound ? stateRound(v) : v;
    }
  }
}

const roundBf16 = (x: number) => bf16ToF32(f32ToBf16(x));

function param(data: Float32Array, shape: number[], opts: TensorOptions = {}): Tensor {
  return fromArray(data, shape, { memoryClass: "parameters", requiresGrad: true, ...opts });
}

function setGrad(p: Tensor, g: Float32Array) {
  p.grad?.dispose();
  p.grad = fromArray(g, [...p.shape], { memoryClass: "gradients", name: `${p.name}.grad` });
}

function decodeState(bytes: Uint8Array, dtype: "f32" | "bf16", n: number): Float32Array {
  if (dtype === "f32") return new Float32Array(bytes.buffer, bytes.byteOffset, n).slice();
  const words = new Uint16Array(bytes.buffer, bytes.byteOffset, n);
  return Float32Array.from(words, (w) => bf16ToF32(w));
}

// Unit in the last place of bf16 at |x|: 2^(e − 7) for x in [2^e, 2^(e+1)).
function bf16Ulp(x: number): number {
  return 2 ** (Math.floor(Math.log2(Math.abs(x))) - 7);
}

const LRS = [1e-2, 2e-2, 5e-3, 1e-2];

Deno.test("adamw f32 matches CPU reference", async () => {
  const w = param(seededArray(7 * 33, 1), [7, 33], { name: "blocks.0.fc.weight" });
  const b = param(seededArray(33, 2), [33], { name: "blocks.0.fc.bias" });
  const opt = new AdamW([{ name: w.name, tensor: w }, { name: b.name, tensor: b }]);
  assert.equal(opt.decays(w), true);
  assert.equal(opt.decays(b), false);

  const refW = new RefAdamW(seededArray(7 * 33, 1), true);
  const refB = new RefAdamW(seededArray(33, 2), false);
  for (let s = 0; s < LRS.length; s++) {
    const gw = seededArray(7 * 33, 10 + s, -0.5, 0.5);
    const gb = seededArray(33, 20 + s, -0.5, 0.5);
    setGrad(w, gw);
    setGrad(b, gb);
    opt.step(LRS[s]);
    refW.step(gw, LRS[s]);
    refB.step(gb, LRS[s]);
  }

  assertClose(await w.toArray(), refW.p, 2e-6, "weight");
  assertClose(await b.toArray(), refB.p, 2e-6, "bias");
  assert.equal(opt.stepCount(w), 4);
  assert.equal(opt.stateBytes, 2 * 4 * (7 * 33 + 33));
  opt.dispose();
});

Deno.test("adamw weight decay is decoupled", async () => {
  // With g = 0 Adam's step vanishes (m = 0), leaving p·(1 − lr·wd) exactly.
  const w = param(Float32Array.from([1, -2, 0.5, 4]), [2, 2], { name: "w" });
  const opt = new AdamW([{ name: "w", tensor: w, decay: true }], { weightDecay: 0.5 });
  setGrad(w, new Float32Array(4));
  opt.step(0.1);
  opt.step(0.1);
  assertClose(await w.toArray(), [1, -2, 0.5, 4].map((x) => x * 0.95 * 0.95), 1e-7, "decayed");
  opt.dispose();
});

Deno.test("adamw bf16 master matches reference", async () => {
  const dtypes: ("bf16" | "f16")[] = gpu().hasF16 ? ["bf16", "f16"] : ["bf16"];
  for (const dtype of dtypes) {
    const n = 301;
    const p = param(seededArray(n, 3), [n], { dtype, name: `${dtype}.weight2d` });
    const init = await p.toArray();
    const opt = new AdamW([{ name: p.name, tensor: p, decay: true }]);
    const ref = new RefAdamW(init, true);
    for (let s = 0; s < LRS.length; s++) {
      const g = seededArray(n, 30 + s, -1, 1);
      setGrad(p, g);
      opt.step(LRS[s]);
      ref.step(g, LRS[s]);
    }

    const master = await opt.master(p)!.toArray();
    assertClose(master, ref.p, 2e-6, `${dtype} master`);
    const stored = await p.toArray();
    const round = dtype === "bf16" ? roundBf16 : (x: number) => f16ToF32(f32ToF16(x));
    for (let i = 0; i < n; i++) {
      assert.equal(stored[i], round(master[i]), `${dtype} param[${i}] is the rounded master`);
    }
    assert.equal(opt.stateBytes, 3 * 4 * n);
    opt.dispose();
  }
});

Deno.test("adamw bf16 state matches rounded reference", async () => {
  const n = 130;
  const p = param(seededArray(n, 4), [n], { name: "w" });
  const opt = new AdamW([{ name: "w", tensor: p, decay: true, stateDtype: "bf16" }]);
  const ref = new RefAdamW(seededArray(n, 4), true);
  for (let s = 0; s < LRS.length; s++) {
    const g = seededArray(n, 40 + s, -1, 1);
    setGrad(p, g);
    opt.step(LRS[s]);
    ref.step(g, LRS[s], 1, roundBf16);
  }
  assertClose(await p.toArray(), ref.p, 1e-5, "param");

  const state = (await opt.stateDict()).params[0];
  assertClose(decodeState(state.m, "bf16", n), ref.m, 1e-2, "m");
  assertClose(decodeState(state.v, "bf16", n), ref.v, 1e-2, "v");
  assert.equal(opt.stateBytes, 2 * 2 * n);
  opt.dispose();
});

Deno.test("adamw stochastic rounding stays within one ulp", async () => {
  const n = 512;
  const p = param(seededArray(n, 5, 0.5, 2), [n], { dtype: "bf16", name: "w" });
  const opt = new AdamW([{ name: "w", tensor: p, decay: true }], {
    bf16Update: "stochastic",
    seed: 9,
  });
  assert.equal(opt.master(p), null);
  assert.equal(opt.stateBytes, 2 * 4 * n);

  // The reference restarts each step from the stored bf16 values, because
  // rounding makes the trajectory differ from an exact one.
  const ref = new RefAdamW(await p.toArray(), true);
  let roundedUp = 0;
  let roundedDown = 0;
  for (let s = 0; s < 3; s++) {
    const g = seededArray(n, 50 + s, -1, 1);
    setGrad(p, g);
    ref.p = Float64Array.from(await p.toArray());
    opt.step(1e-3);
    ref.step(g, 1e-3);

    const out = await p.toArray();
    for (let i = 0; i < n; i++) {
      const ulp = bf16Ulp(ref.p[i]);
      assert.ok(
        Math.abs(out[i] - ref.p[i]) < ulp * (1 + 1e-4),
        `step ${s} [${i}]: ${out[i]} vs ${ref.p[i]}`,
      );
      assert.equal(out[i], roundBf16(out[i]), "stored value is a bf16 value");
      if (out[i] > ref.p[i]) roundedUp++;
      else if (out[i] < ref.p[i]) roundedDown++;
    }
  }
  // Round-to-nearest would mostly leave lr = 1e-3 steps (≪ ulp/2 ≥ 2^-9) in place;
  // stochastic rounding must pick both directions.
  assert.ok(roundedUp > 100, `rounded up ${roundedUp} times`);
  assert.ok(roundedDown > 100, `rounded down ${roundedDown} times`);
  opt.dispose();
});

Deno.test("adamw stochastic rounding is reproducible", async () => {
  const n = 256;
  const run = async (seed: number, dtype: "bf16" | "f16") => {
    const p = param(seededArray(n, 6), [n], { dtype, name: "w" });
    const opt = new AdamW([{ name: "w", tensor: p }], { bf16Update: "stochastic", seed });
    for (let s = 0; s < 2; s++) {
      setGrad(p, seededArray(n, 60 + s));
      opt.step(1e-3);
    }
    const bytes = await p.toBytes();
    opt.dispose();
    return bytes;
  };
  const dtypes: ("bf16" | "f16")[] = gpu().hasF16 ? ["bf16", "f16"] : ["bf16"];
  for (const dtype of dtypes) {
    const a = await run(1, dtype);
    const b = await run(1, dtype);
    const c = await run(2, dtype);
    assert.deepEqual(a, b, `${dtype}: same seed, same bits`);
    assert.notDeepEqual(a, c, `${dtype}: another seed, other bits`);
  }
});

Deno.test({ name: "adamw f16 stochastic within one ulp", ignore: !gpu().hasF16 }, async () => {
  const n = 256;
  const p = param(seededArray(n, 7, 0.5, 2), [n], { dtype: "f16", name: "w" });
  const opt = new AdamW([{ name: "w", tensor: p, decay: false }], { bf16Update: "stochastic" });
  const ref = new RefAdamW(await p.toArray(), false);
  const g = seededArray(n, 70);
  setGrad(p, g);
  opt.step(1e-4);
  ref.step(g, 1e-4);
  const out = await p.toArray();
  for (let i = 0; i < n; i++) {
    const ulp = 2 ** (Math.floor(Math.log2(ref.p[i])) - 10);
    assert.ok(Math.abs(out[i] - ref.p[i]) < ulp, `[${i}]: ${out[i]} vs ${ref.p[i]}`);
  }
  opt.dispose();
});

Deno.test("adamw tiny updates stall only with nearest", async () => {
  // At 1.0 the bf16 spacing below is 2^-8 ≈ 0.0039. With g = 1 every step
  // moves the exact value by lr/(1 + ε) = 1e-3, under half that spacing.
  const n = 1024;
  const steps = 20;
  const lr = 1e-3;
  const expected = 1 - steps * lr / (1 + 1e-8);
  const results: Record<string, Float32Array> = {};
  const masters: Record<string, Float32Array> = {};
  for (const mode of ["nearest", "master", "stochastic"] as const) {
    const p = param(new Float32Array(n).fill(1), [n], { dtype: "bf16", name: "w" });
    const opt = new AdamW([{ name: "w", tensor: p, decay: false }], { bf16Update: mode, seed: 3 });
    setGrad(p, new Float32Array(n).fill(1));
    for (let s = 0; s < steps; s++) opt.step(lr);
    results[mode] = await p.toArray();
    if (mode === "master") masters[mode] = await opt.master(p)!.toArray();
    opt.dispose();
  }

  assert.ok(results.nearest.every((x) => x === 1), "round-to-nearest never moves");

  for (const x of masters.master) {
    assert.ok(Math.abs(x - expected) < 1e-5, `master ${x} vs ${expected}`);
  }
  assert.ok(results.master.every((x) => x === roundBf16(expected)), "param is the rounded master");

  // Each element is an unbiased walk with per-step error below one spacing
  // (2^-8), so the mean of 1024 has a standard deviation below 0.0006.
  const mean = results.stochastic.reduce((a, b) => a + b, 0) / n;
  assert.ok(Math.abs(mean - expected) < 0.002, `stochastic mean ${mean} vs ${expected}`);
});

Deno.test("adamw clipping uses global norm", async () => {
  const shapes = [[5, 8], [8], [3, 7]];
  const params = shapes.map((s, k) =>
    param(seededArray(s[0] * (s[1] ?? 1), 80 + k), s, { name: `p${k}` })
  );
  const opt = new AdamW(
    params.map((t) => ({ name: t.name, tensor: t, decay: t.shape.length > 1 })),
  );
  const refs = params.map((t, k) => new RefAdamW(seededArray(t.numel, 80 + k), t.shape.length > 1));
  const clip = new GradNormClip(0.5);

  for (let s = 0; s < 3; s++) {
    // Step 1 has tiny gradients, so its norm stays under maxNorm and the scale is 1.
    const amplitude = s === 1 ? 0.01 : 2;
    const grads = params.map((t, k) =>
      seededArray(t.numel, 90 + 10 * s + k, -amplitude, amplitude)
    );
    params.forEach((t, k) => setGrad(t, grads[k]));

    let sumSq = 0;
    for (const g of grads) for (const x of g) sumSq += x * x;
    const norm = Math.sqrt(sumSq);
    const scale = Math.min(1, 0.5 / (norm + 1e-6));

    opt.step(1e-2, clip.computeScale(opt.gradients()));
    refs.forEach((r, k) => r.step(grads[k], 1e-2, scale));

    assert.ok(Math.abs((await clip.norm()) - norm) <= 1e-5 * norm, `step ${s} norm`);
    assert.ok(Math.abs((await clip.scaleValue()) - scale) <= 1e-5 * scale, `step ${s} scale`);
    if (s === 1) assert.equal(await clip.scaleValue(), 1);
  }
  for (let k = 0; k < params.length; k++) {
    assertClose(await params[k].toArray(), refs[k].p, 2e-6, `p${k}`);
  }
  clip.dispose();
  opt.dispose();
});

Deno.test("adamw window split matches reference", async () => {
  const g = gpu();
  const saved = g.bindingLimit;
  // 4096 bytes leave 959 f32 elements per window, so every tensor here spans
  // several windows, with odd lengths and misaligned starts.
  g.bindingLimit = 4096;
  try {
    const a = param(seededArray(3001, 100), [3001, 1], { dtype: "bf16", name: "a.weight" });
    const b = param(seededArray(2999, 101), [2999, 1], { name: "b.weight" });
    const opt = new AdamW([
      { name: a.name, tensor: a, decay: true },
      { name: b.name, tensor: b, decay: true, stateDtype: "bf16" },
    ]);
    const refA = new RefAdamW(await a.toArray(), true);
    const refB = new RefAdamW(seededArray(2999, 101), true);
    const clip = new GradNormClip(1.0);

    for (let s = 0; s < 2; s++) {
      const ga = seededArray(3001, 110 + s, -0.1, 0.1);
      const gb = seededArray(2999, 120 + s, -0.1, 0.1);
      setGrad(a, ga);
      setGrad(b, gb);
      let sumSq = 0;
      for (const x of [...ga, ...gb]) sumSq += x * x;
      const scale = Math.min(1, 1 / (Math.sqrt(sumSq) + 1e-6));
      assert.ok(scale < 1, "gradients exceed maxNorm");

      const before = g.dispatchCount;
      opt.step(1e-2, clip.computeScale(opt.gradients()));
      // The 8 windows' partial sums in batches, the final reduce, 4 update
      // windows per tensor, and 4 master loads on the first step.
      const batch = Math.min(16, g.limits.maxStorageBuffersPerShaderStage - 1);
      const partials = Math.ceil(8 / batch);
      assert.equal(
        g.dispatchCount - before,
        partials + 1 + 8 + (s === 0 ? 4 : 0),
        `step ${s} dispatches`,
      );
      refA.step(ga, 1e-2, scale);
      refB.step(gb, 1e-2, scale, roundBf16);
    }
    assertClose(await opt.master(a)!.toArray(), refA.p, 2e-6, "a master");
    assertClose(await b.toArray(), refB.p, 1e-5, "b");
    clip.dispose();
    opt.dispose();
  } finally {
    g.bindingLimit = saved;
  }
});

Deno.test("adamw full reset restarts bias correction", async () => {
  const n = 64;
  const p = param(seededArray(n, 130), [4, 16], { name: "lora_A.weight" });
  const q = param(seededArray(n, 131), [4, 16], { name: "lora_B.weight" });
  const opt = new AdamW([{ name: p.name, tensor: p }, { name: q.name, tensor: q }]);
  const refP = new RefAdamW(seededArray(n, 130), true);
  const refQ = new RefAdamW(seededArray(n, 131), true);
  const stepBoth = (s: number) => {
    const gp = seededArray(n, 140 + s);
    const gq = seededArray(n, 150 + s);
    setGrad(p, gp);
    setGrad(q, gq);
    opt.step(1e-2);
    refP.step(gp, 1e-2);
    refQ.step(gq, 1e-2);
  };
  for (let s = 0; s < 3; s++) stepBoth(s);

  await opt.resetState(["lora_A.weight"]);
  assert.equal(opt.stepCount(p), 0);
  assert.equal(opt.stepCount(q), 3);
  const state = (await opt.stateDict()).params;
  assert.ok(
    decodeState(state[0].m, "f32", n).every((x) => x === 0),
    "m of the reset parameter is zero",
  );
  assert.ok(
    decodeState(state[0].v, "f32", n).every((x) => x === 0),
    "v of the reset parameter is zero",
  );
  assert.ok(
    decodeState(state[1].m, "f32", n).some((x) => x !== 0),
    "m of the other parameter stays",
  );

  // After the reset the first update is lr·m̂/(√v̂ + ε) with t = 1, as for a fresh optimizer.
  refP.m.fill(0);
  refP.v.fill(0);
  refP.t = 0;
  stepBoth(3);
  assert.equal(opt.stepCount(p), 1);
  assertClose(await p.toArray(), refP.p, 2e-6, "reset parameter");
  assertClose(await q.toArray(), refQ.p, 2e-6, "other parameter");
  opt.dispose();
});

Deno.test("adamw pruned reset zeroes smallest entries", async () => {
  const n = 200;
  const p = param(seededArray(n, 160), [10, 20], { name: "w" });
  const opt = new AdamW([{ name: "w", tensor: p }]);
  const ref = new RefAdamW(seededArray(n, 160), true);
  for (let s = 0; s < 3; s++) {
    const g = seededArray(n, 170 + s);
    setGrad(p, g);
    opt.step(1e-2);
    ref.step(g, 1e-2);
  }

  const before = (await opt.stateDict()).params[0];
  await opt.resetState([p], { pruneFraction: 0.3 });
  const after = (await opt.stateDict()).params[0];
  assert.equal(after.step, 3, "pruning keeps the step count");

  // With distinct magnitudes the 0.3-quantile (position 0.3·199 = 59.7) lies
  // between the 60th and 61st smallest, so exactly 60 entries go.
  for (const key of ["m", "v"] as const) {
    const old = decodeState(before[key], "f32", n);
    const now = decodeState(after[key], "f32", n);
    const order = [...old.keys()].sort((i, j) => Math.abs(old[i]) - Math.abs(old[j]));
    assert.equal(new Set(old.map(Math.abs)).size, n, `${key} magnitudes are distinct`);
    const pruned = new Set(order.slice(0, 60));
    for (let i = 0; i < n; i++) {
      assert.equal(now[i], pruned.has(i) ? 0 : old[i], `${key}[${i}]`);
    }
    const refState = key === "m" ? ref.m : ref.v;
    for (const i of pruned) refState[i] = 0;
  }

  const g = seededArray(n, 180);
  setGrad(p, g);
  opt.step(1e-2);
  ref.step(g, 1e-2);
  assertClose(await p.toArray(), ref.p, 2e-6, "step after pruning");
  await assert.rejects(() => opt.resetState([p], { pruneFraction: 1 }), /pruneFraction 1/);
  await assert.rejects(() => opt.resetState(["missing"]), /missing is not in this optimizer/);
  opt.dispose();
});

Deno.test("adamw reset reloads master copy", async () => {
  const n = 32;
  const p = param(seededArray(n, 190), [n], { dtype: "bf16", name: "adapter.weight" });
  const opt = new AdamW([{ name: p.name, tensor: p, decay: false }]);
  setGrad(p, seededArray(n, 191));
  opt.step(1e-2);

  // A re-initialization outside the optimizer, then a reset, as ReLoRA does.
  const fresh = seededArray(n, 192);
  p.grad!.dispose();
  const replacement = fromArray(fresh, [n], { dtype: "bf16" });
  gpu().copy(replacement.buffer, 0, p.buffer, 0, p.byteLength);
  await opt.resetState([p]);
  setGrad(p, new Float32Array(n));
  opt.step(1e-2);

  // Zero gradient and no decay: the new values come through unchanged.
  assert.deepEqual(await opt.master(p)!.toArray(), await replacement.toArray());
  replacement.dispose();
  opt.dispose();
});

Deno.test("adamw state dict round trip", async () => {
  const n = 90;
  const options: AdamWOptions = { bf16Update: "master" };
  const p = param(seededArray(n, 200), [9, 10], { dtype: "bf16", name: "w" });
  const q = param(seededArray(n, 201), [9, 10], { name: "u" });
  const opt = new AdamW([
    { name: "w", tensor: p },
    { name: "u", tensor: q, stateDtype: "bf16" },
  ], options);
  for (let s = 0; s < 2; s++) {
    setGrad(p, seededArray(n, 210 + s));
    setGrad(q, seededArray(n, 220 + s));
    opt.step(1e-2);
  }
  const saved = await opt.stateDict();
  const savedP = await p.toBytes();
  const savedQ = await q.toBytes();
  assert.equal(saved.params[0].step, 2);
  assert.equal(saved.params[0].master?.byteLength, 4 * n);

  setGrad(p, seededArray(n, 230));
  setGrad(q, seededArray(n, 231));
  opt.step(1e-2);
  const expectedP = await opt.master(p)!.toBytes();
  const expectedQ = await q.toBytes();

  // A second optimizer restored from the checkpoint takes the same step.
  const p2 = param(new Float32Array(n), [9, 10], { dtype: "bf16", name: "w" });
  const q2 = param(new Float32Array(n), [9, 10], { name: "u" });
  p2.grad = p.grad;
  q2.grad = q.grad;
  writeBytes(p2.buffer, 0, savedP as Uint8Array<ArrayBuffer>);
  writeBytes(q2.buffer, 0, savedQ as Uint8Array<ArrayBuffer>);
  const opt2 = new AdamW([
    { name: "w", tensor: p2 },
    { name: "u", tensor: q2, stateDtype: "bf16" },
  ], options);
  opt2.loadStateDict(saved);
  assert.equal(opt2.stepCount("w"), 2);
  opt2.step(1e-2);
  assert.deepEqual(await opt2.master(p2)!.toBytes(), expectedP);
  assert.deepEqual(await q2.toBytes(), expectedQ);

  const wrong = { params: [{ ...saved.params[0], name: "x" }, saved.params[1]] };
  assert.throws(() => opt2.loadStateDict(wrong), /missing w; unknown x/);
  opt.dispose();
  opt2.dispose();
});

Deno.test("adamw skips parameters without gradient", async () => {
  const p = param(seededArray(8, 240), [8], { name: "w" });
  const opt = new AdamW([{ name: "w", tensor: p }]);
  opt.step(1e-2);
  assert.equal(opt.stepCount(p), 0);
  assert.deepEqual(await p.toArray(), seededArray(8, 240));
  assert.throws(() => opt.step(-1), /invalid learning rate -1/);
  assert.throws(
    () => new AdamW([{ name: "w", tensor: p }, { name: "w", tensor: p }]),
    /appears twice/,
  );
  opt.dispose();
});

Deno.test("adamw zeroGrad clears gradients", async () => {
  const p = param(seededArray(8, 250), [8], { name: "w" });
  const opt = new AdamW([{ name: "w", tensor: p }]);
  setGrad(p, seededArray(8, 251));
  opt.zeroGrad();
  assert.deepEqual(await p.grad!.toArray(), new Float32Array(8));
  opt.dispose();
});

Deno.test("adamw batched small parameters", async () => {
  // Small f32 and bf16 parameters of several sizes and decay flags, one with
  // bf16 state, and one f32 parameter over the 4096-element batching limit.
  const specs: { n: number; dtype: "f32" | "bf16"; decay: boolean; state?: "bf16" }[] = [];
  for (let k = 0; k < 9; k++) {
    specs.push({ n: [5, 33, 128, 4096][k % 4], dtype: "f32", decay: k % 2 === 0 });
  }
  for (let k = 0; k < 7; k++) {
    specs.push({ n: [6, 64, 300][k % 3], dtype: "bf16", decay: k % 2 === 1 });
  }
  specs.push({ n: 40, dtype: "f32", decay: true, state: "bf16" });
  specs.push({ n: 5000, dtype: "f32", decay: true });
  const params = specs.map((s, k) =>
    param(seededArray(s.n, 100 + k), [s.n], { dtype: s.dtype, name: `p${k}` })
  );
  const opt = new AdamW(
    params.map((p, k) => ({
      name: p.name,
      tensor: p,
      decay: specs[k].decay,
      stateDtype: specs[k].state,
    })),
  );
  const refs = await Promise.all(
    params.map(async (p, k) => new RefAdamW(await p.toArray(), specs[k].decay)),
  );

  const limit = gpu().limits.maxStorageBuffersPerShaderStage;
  const f32Batch = Math.min(8, Math.floor((limit - 1) / 4));
  const masterBatch = Math.min(8, Math.floor((limit - 1) / 5));
  for (let s = 0; s < LRS.length; s++) {
    const grads = specs.map((spec, k) => seededArray(spec.n, 200 + 31 * s + k, -1, 1));
    params.forEach((p, k) => setGrad(p, grads[k]));
    const labels = await dispatchLabels(() => opt.step(LRS[s]));
    const want = Math.ceil(9 / f32Batch) + Math.ceil(7 / masterBatch) + 1 + 1;
    // Master copies load in the first step only.
    assert.equal(labels.filter((l) => l.startsWith("adamw(")).length, want, labels.join("\n"));
    params.forEach((_, k) =>
      refs[k].step(grads[k], LRS[s], 1, specs[k].state ? roundBf16 : undefined)
    );
    // A reset after the second step restarts two parameters' bias correction
    // while the others in their batches keep counting. A bf16 parameter's
    // master copy then reloads from its rounded value.
    if (s === 1) {
      await opt.resetState([params[1], params[10]]);
      refs[1] = new RefAdamW(refs[1].p, specs[1].decay);
      refs[10] = new RefAdamW(refs[10].p.map(roundBf16), specs[10].decay);
    }
  }

  for (let k = 0; k < params.length; k++) {
    const got = specs[k].dtype === "bf16"
      ? await opt.master(params[k])!.toArray()
      : await params[k].toArray();
    assertClose(
      got,
      refs[k].p,
      specs[k].state ? 1e-5 : 2e-6,
      `p${k} (${specs[k].dtype}, ${specs[k].n})`,
    );
  }
  assert.equal(opt.stepCount(params[1]), 2);
  assert.equal(opt.stepCount(params[0]), 4);
  opt.dispose();
});

Deno.test("adamw batched stochastic streams", async () => {
  // Three equal bf16 parameters with equal gradients share one dispatch. Each
  // lands within one ulp of the exact update, and their random streams differ.
  const n = 256;
  const params = [0, 1, 2].map((k) =>
    param(seededArray(n, 7, 0.5, 2), [n], { dtype: "bf16", name: `w${k}` })
  );
  const opt = new AdamW(params.map((p) => ({ name: p.name, tensor: p, decay: true })), {
    bf16Update: "stochastic",
    seed: 3,
  });
  const g = seededArray(n, 70, -1, 1);
  params.forEach((p) => setGrad(p, g));
  const ref = new RefAdamW(await params[0].toArray(), true);
  ref.step(g, 1e-3);
  const labels = await dispatchLabels(() => opt.step(1e-3));
  assert.equal(labels.length, 1, labels.join("\n"));

  const out = await Promise.all(params.map((p) => p.toArray()));
  for (const values of out) {
    for (let i = 0; i < n; i++) {
      assert.ok(Math.abs(values[i] - ref.p[i]) < bf16Ulp(ref.p[i]) * (1 + 1e-4), `[${i}]`);
    }
  }
  assert.notDeepEqual(out[0], out[1]);
  assert.notDeepEqual(out[1], out[2]);
  opt.dispose();
});
