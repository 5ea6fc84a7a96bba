import assert from "node:assert/strict";
import { bf16ToF32, f32ToBf16 } from "../core/tensor.ts";
import { magnitudeQuantile, pruneByMagnitude } from "./prune.ts";

Deno.test("magnitudeQuantile interpolates linearly", () => {
  const x = Float32Array.from([-4, 1, 3, -2, 5]);
  assert.equal(magnitudeQuantile(x, 0), 1);
  assert.equal(magnitudeQuantile(x, 1), 5);
  assert.equal(magnitudeQuantile(x, 0.5), 3);
  // Position 0.3·4 = 1.2 between |x| = 2 and 3.
  assert.ok(Math.abs(magnitudeQuantile(x, 0.3) - 2.2) < 1e-6);
});

Deno.test("pruneByMagnitude zeroes smallest f32 entries", () => {
  const x = Float32Array.from([7, -1, 3, -10, 2, 9, -4, 6, 5, -8]);
  const bytes = new Uint8Array(x.buffer.slice(0));
  // Position 0.35·9 = 3.15: threshold 4.15, so |x| ∈ {1, 2, 3, 4} go.
  const zeroed = pruneByMagnitude(bytes, "f32", x.length, 0.35);
  const out = new Float32Array(bytes.buffer);
  assert.equal(zeroed, 4);
  for (let i = 0; i < x.length; i++) {
    assert.equal(out[i], Math.abs(x[i]) <= 4 ? 0 : x[i], `entry ${i}`);
  }
});

Deno.test("pruneByMagnitude casts bf16 threshold", () => {
  // Neighbouring bf16 values 1 and 1 + 2^-7: the 0.9-quantile 1 + 0.9·2^-7
  // rounds to 1 + 2^-7 in bf16, so both entries go, as with torch's cast.
  const next = 1 + 2 ** -7;
  const words = Uint16Array.from([f32ToBf16(1), f32ToBf16(-next), f32ToBf16(3), f32ToBf16(3)]);
  const zeroed = pruneByMagnitude(new Uint8Array(words.buffer), "bf16", 2, 0.9);
  assert.equal(zeroed, 2);
  assert.equal(words[0], 0);
  assert.equal(words[1], 0);
  assert.equal(bf16ToF32(words[2]), 3, "entries past numel stay");

  const f = Float32Array.from([1, -next]);
  assert.equal(pruneByMagnitude(new Uint8Array(f.buffer), "f32", 2, 0.9), 1);
  assert.equal(f[1], -next);
});
