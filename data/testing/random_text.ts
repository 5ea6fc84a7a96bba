/** Seeded random Unicode strings for round-trip tests of tokenizers. */
import { Rng } from "../prng.ts";

// Code point ranges: ASCII, Latin-1 letters, combining diacritics (U+0300-036F), Greek,
// Cyrillic, Arabic, Devanagari, CJK ideographs, Hangul syllables, emoji, and ZWJ/variation
// selectors that join emoji sequences.
const RANGES: [number, number][] = [
  [0x20, 0x7e],
  [0x20, 0x7e],
  [0x0a, 0x0a],
  [0xc0, 0xff],
  [0x300, 0x36f],
  [0x391, 0x3c9],
  [0x410, 0x44f],
  [0x621, 0x64a],
  [0x905, 0x939],
  [0x4e00, 0x9fff],
  [0xac00, 0xd7a3],
  [0x1f300, 0x1f64f],
  [0x200d, 0x200d],
  [0xfe0f, 0xfe0f],
];

/** Returns a string of `length` code points drawn from RANGES with generator `rng`. */
export function randomText(rng: Rng, length: number): string {
  let out = "";
  for (let i = 0; i < length; i++) {
    const [lo, hi] = RANGES[rng.below(RANGES.length)];
    out += String.fromCodePoint(lo + rng.below(hi - lo + 1));
  }
  return out;
}
