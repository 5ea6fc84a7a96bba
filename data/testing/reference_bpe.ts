/**
 * A slow, direct byte-level BPE used only as an independent reference in tests: split the
 * text with the tokenizer's pattern, map UTF-8 bytes to GPT-2's printable byte alphabet,
 * then repeatedly merge the adjacent pair with the lowest merge rank.
 */

/** GPT-2's byte-to-character table: printable Latin-1 bytes map to themselves, the other
 * 68 bytes to U+0100 and up in byte order (from GPT-2's encoder.py). */
function byteAlphabet(): string[] {
  const table: string[] = new Array(256);
  let next = 256;
  for (let b = 0; b < 256; b++) {
    const printable = (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) ||
      (b >= 0xae && b <= 0xff);
    table[b] = String.fromCodePoint(printable ? b : next++);
  }
  return table;
}

/** A reference encoder built from a vocabulary, merge list and split pattern. */
export class ReferenceBpe {
  #ranks = new Map<string, number>();
  #alphabet = byteAlphabet();
  #encoder = new TextEncoder();

  constructor(
    readonly vocab: Record<string, number>,
    merges: string[][],
    readonly pattern: RegExp,
    readonly normalize: (text: string) => string = (text) => text,
  ) {
    merges.forEach(([a, b], rank) => this.#ranks.set(`${a} ${b}`, rank));
  }

  encode(text: string): number[] {
    const ids: number[] = [];
    for (const match of this.normalize(text).matchAll(this.pattern)) {
      let symbols = Array.from(this.#encoder.encode(match[0]), (b) => this.#alphabet[b]);
      for (;;) {
        let best = -1;
        let bestRank = Infinity;
        for (let i = 0; i + 1 < symbols.length; i++) {
          const rank = this.#ranks.get(`${symbols[i]} ${symbols[i + 1]}`);
          if (rank !== undefined && rank < bestRank) {
            bestRank = rank;
            best = i;
          }
        }
        if (best < 0) break;
        const [a, b] = [symbols[best], symbols[best + 1]];
        const merged: string[] = [];
        for (let i = 0; i < symbols.length; i++) {
          if (i + 1 < symbols.length && symbols[i] === a && symbols[i + 1] === b) {
            merged.push(a + b);
            i++;
          } else {
            merged.push(symbols[i]);
          }
        }
        symbols = merged;
      }
      for (const symbol of symbols) {
        const id = this.vocab[symbol];
        if (id === undefined) throw new Error(`reference BPE: no id for ${JSON.stringify(symbol)}`);
        ids.push(id);
      }
    }
    return ids;
  }
}

/** GPT-2's split pattern (from GPT-2's encoder.py). */
export const GPT2_PATTERN =
  /'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+/gu;

/** Qwen2's split pattern from its tokenizer.json, with the case-insensitive group spelled out. */
export const QWEN2_PATTERN =
  /'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD]|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+/gu;
