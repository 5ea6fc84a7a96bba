import assert from "node:assert/strict";
import { constant, cosine, DEFAULT_LR, jagged, wsd } from "./schedule.ts";

function near(actual: number, expected: number, label: string) {
  assert.ok(
    Math.abs(actual - expected) <= 1e-12 * Math.max(1, Math.abs(expected)),
    `${label}: ${actual} vs ${expected}`,
  );
}

Deno.test("wsd phases at chosen steps", () => {
  // total 100, warm-up 10, decay 20: stable through step 79, decay steps 80..99.
  const lr = wsd({ peak: 1e-3, total: 100, warmup: 10, decay: 20, minLrRatio: 0.1 });
  near(lr(0), 1e-3 / 11, "step 0");
  near(lr(5), 1e-3 * 6 / 11, "mid warm-up");
  near(lr(10), 1e-3, "end of warm-up");
  near(lr(79), 1e-3, "last stable step");
  near(lr(80), 1e-3 * (1 - (1 / 20) * 0.9), "first decay step");
  near(lr(89), 1e-3 * (1 - (10 / 20) * 0.9), "mid decay");
  near(lr(99), 1e-4, "last step");
  near(lr(150), 1e-4, "past the end");
});

Deno.test("wsd rejects too long phases", () => {
  assert.throws(() => wsd({ peak: 1, total: 10, warmup: 6, decay: 5 }), /exceeds total 10/);
  assert.throws(
    () => wsd({ peak: 1, total: 10, warmup: 2, decay: 2, minLrRatio: 2 }),
    /minLrRatio/,
  );
});

Deno.test("cosine at chosen steps", () => {
  // Warm-up 4, then cosine over steps 4..24 (q = (s − 4)/20), min 0.2·peak.
  const lr = cosine({ peak: 2, total: 25, warmup: 4, minLrRatio: 0.2 });
  near(lr(0), 0.4, "step 0");
  near(lr(2), 1.2, "mid warm-up");
  near(lr(4), 2, "peak");
  near(lr(14), 0.4 + 1.6 * 0.5, "halfway");
  near(lr(9), 0.4 + 1.6 * (1 + Math.cos(Math.PI / 4)) / 2, "quarter");
  near(lr(24), 0.4, "last step");
  near(lr(30), 0.4, "past the end");
});

Deno.test("constant with warm-up", () => {
  const lr = constant({ peak: 3e-4, warmup: 3 });
  near(lr(0), 7.5e-5, "step 0");
  near(lr(1), 1.5e-4, "step 1");
  near(lr(3), 3e-4, "step 3");
  near(lr(1000), 3e-4, "step 1000");
  near(constant({ peak: 5 })(0), 5, "no warm-up");
});

Deno.test("jagged restarts from a list", () => {
  const base = cosine({ peak: 1, total: 1000, warmup: 10 });
  const lr = jagged(base, { resetSteps: [300, 600], warmup: 50 });
  near(lr(5), base(5), "before any reset");
  near(lr(299), base(299), "step before reset");
  near(lr(300), base(350) / 51, "reset step");
  near(lr(325), base(350) * 26 / 51, "mid restart warm-up");
  near(lr(350), base(350), "end of restart warm-up");
  near(lr(610), base(650) * 11 / 51, "second restart");
  near(lr(999), base(999), "last step");
});

Deno.test("jagged restarts every K steps", () => {
  const base = constant({ peak: 2 });
  const lr = jagged(base, { resetSteps: { every: 100 }, warmup: 10 });
  near(lr(0), 2, "step 0 is not a reset");
  near(lr(99), 2, "step 99");
  near(lr(100), 2 / 11, "step 100");
  near(lr(104), 2 * 5 / 11, "step 104");
  near(lr(110), 2, "step 110");
  near(lr(203), 2 * 4 / 11, "step 203");
  assert.throws(() => jagged(base, { resetSteps: [5, 3] }), /increasing order/);
});

Deno.test("schedules reject invalid steps", () => {
  const lr = constant({ peak: 1 });
  assert.throws(() => lr(-1), /invalid step -1/);
  assert.throws(() => lr(1.5), /invalid step 1.5/);
});

Deno.test("default learning rates per method", () => {
  assert.equal(DEFAULT_LR.full, 2e-4);
  for (const m of ["bpt", "relora", "lora", "hyperadapt"] as const) {
    assert.equal(DEFAULT_LR[m], 2e-3);
  }
});
