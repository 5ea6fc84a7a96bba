/**
 * Deterministic randomness for shuffling: a 32-bit SplitMix generator and string hashing.
 *
 * The generator adds the golden-ratio constant 0x9e3779b9 to its state (a Weyl sequence)
 * and scrambles the sum with the MurmurHash3 32-bit finaliser (constants 0x85ebca6b,
 * 0xc2b2ae35, from Austin Appleby's MurmurHash3). Its whole state is one uint32, so a
 * loader can store it in JSON.
 */

/** Scrambles a uint32 with the MurmurHash3 finaliser, a bijection on 32-bit integers. */
export function mix32(x: number): number {
  x = Math.imul(x ^ (x >>> 16), 0x85ebca6b);
  x = Math.imul(x ^ (x >>> 13), 0xc2b2ae35);
  return (x ^ (x >>> 16)) >>> 0;
}

/** FNV-1a 32-bit hash of a string's UTF-16 code units. */
export function hashString(text: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) {
    h = Math.imul(h ^ text.charCodeAt(i), 0x01000193);
  }
  return h >>> 0;
}

/** Combines integers into one 32-bit seed, so each (seed, epoch, shard, block) gets its own stream. */
export function deriveSeed(...parts: number[]): number {
  let h = 0x6a09e667;
  for (const part of parts) h = mix32((h ^ mix32(part >>> 0)) + 0x9e3779b9);
  return h;
}

/** SplitMix32 generator; `state` is a uint32 that fully determines the following outputs. */
export class Rng {
  state: number;

  constructor(seed: number) {
    this.state = seed >>> 0;
  }

  /** Returns the next uniform uint32. */
  nextU32(): number {
    this.state = (this.state + 0x9e3779b9) >>> 0;
    return mix32(this.state);
  }

  /** Returns a uniform integer in [0, n) for 0 < n <= 2^32, without modulo bias. */
  below(n: number): number {
    // Rejection sampling: drop the top 2^32 mod n values so every residue is equally likely.
    const limit = 0x100000000 - (0x100000000 % n);
    for (;;) {
      const x = this.nextU32();
      if (x < limit) return x % n;
    }
  }

  /** Shuffles `items` in place with the Fisher-Yates algorithm and returns it. */
  shuffle<T>(items: T[]): T[] {
    for (let i = items.length - 1; i > 0; i--) {
      const j = this.below(i + 1);
      const tmp = items[i];
      items[i] = items[j];
      items[j] = tmp;
    }
    return items;
  }
}
