import assert from "node:assert/strict";
import { defaultDecay } from "./decay.ts";

Deno.test("defaultDecay excludes norms, biases, diagonals", () => {
  const cases: [string, number[], boolean][] = [
    ["layers.0.self_attn.q_proj.weight", [896, 896], true],
    ["embed_tokens.weight", [151936, 896], true],
    ["layers.0.mlp.up_proj.lora_A.weight", [8, 896], true],
    ["layers.0.mlp.up_proj.bpt_u", [4864, 8], true],
    ["layers.0.input_layernorm.weight", [896], false],
    ["layers.0.self_attn.q_proj.bias", [896], false],
    ["model.norm.weight", [4, 896], false],
    ["layers.0.attn.q_bias", [2, 448], false],
    ["layers.0.mlp.up_proj.bpt_a", [4864], false],
    ["layers.0.mlp.up_proj.a", [4864, 1], false],
    ["layers.0.mlp.up_proj.bpt_b", [1, 896], false],
    ["scalar", [], false],
  ];
  for (const [name, shape, expected] of cases) {
    assert.equal(defaultDecay(name, shape), expected, name);
  }
});
