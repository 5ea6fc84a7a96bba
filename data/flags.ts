/**
 * Command-line helpers shared by `deno task tokenize`, `bench` and `compare`: one-line
 * messages for node:util parseArgs errors, flag suggestions for typos, and token counts
 * with K/M/B suffixes.
 */

/** Returns the Levenshtein distance between `a` and `b`. */
export function editDistance(a: string, b: string): number {
  let previous = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const current = [i];
    for (let j = 1; j <= b.length; j++) {
      const substitution = previous[j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1);
      current.push(Math.min(previous[j] + 1, current[j - 1] + 1, substitution));
    }
    previous = current;
  }
  return previous[b.length];
}

/**
 * Returns the candidate nearest to `name` by edit distance, or null when even the nearest
 * differs in more than half of `name`'s characters (at least 2 edits are always allowed),
 * so an unrelated flag is never suggested.
 */
export function nearestName(name: string, candidates: readonly string[]): string | null {
  let best: string | null = null;
  let bestDistance = Infinity;
  for (const candidate of candidates) {
    const distance = editDistance(name, candidate);
    if (distance < bestDistance) {
      best = candidate;
      bestDistance = distance;
    }
  }
  return bestDistance <= Math.max(2, Math.floor(name.length / 2)) ? best : null;
}

/**
 * Returns a one-line message for an error of node:util `parseArgs`, or null when `error`
 * is not one. `flags` are the command's long flag names without dashes, used to suggest
 * the flag a typo was meant to be. `command` is the task name, such as "tokenize".
 */
export function parseArgsMessage(
  error: unknown,
  flags: readonly string[],
  command: string,
): string | null {
  const code = (error as { code?: string } | null)?.code;
  if (typeof code !== "string" || !code.startsWith("ERR_PARSE_ARGS")) return null;
  // node:util's messages span several lines and quote the argument in single quotes.
  const message = (error as Error).message;
  const quoted = message.match(/'([^']*)'/)?.[1] ?? "";
  const helpCommand = `deno task ${command} --help`;
  const help = `run ${helpCommand} to list the flags`;
  if (code === "ERR_PARSE_ARGS_UNKNOWN_OPTION") {
    const suggestion = nearestName(quoted.replace(/^-+/, "").split("=")[0], flags);
    if (suggestion === null) return `unknown flag ${quoted}: ${help}`;
    return `unknown flag ${quoted}: did you mean --${suggestion}? Run ${helpCommand} to list the flags`;
  }
  if (code === "ERR_PARSE_ARGS_INVALID_OPTION_VALUE") {
    // The quoted text is "--out <value>" or "-h, --help": the long form names the flag.
    const flag = quoted.match(/--[\w-]+/)?.[0] ?? quoted;
    if (message.includes("ambiguous")) {
      return `${flag} is followed by a value that starts with "-": write it as ${flag}=VALUE`;
    }
    if (message.includes("does not take an argument")) {
      return `${flag} takes no value: remove the value after it`;
    }
    return `${flag} is missing its value: ${help} and their formats`;
  }
  if (code === "ERR_PARSE_ARGS_UNEXPECTED_POSITIONAL") {
    return `unexpected argument "${quoted}": every input is given with a flag, ${help}`;
  }
  return `${message.split("\n")[0]}: ${help}`;
}

const SUFFIX_EXPONENT: Record<string, number> = { "": 0, k: 3, m: 6, b: 9 };

/**
 * Parses a token count such as "5000000", "5_000_000", "5M" or "2.5k" (K, M and B scale by
 * 10³, 10⁶ and 10⁹, as `deno task train --tokens` reads them). Returns null unless the
 * text is a whole number of tokens at least `min`.
 */
export function parseTokenCount(text: string, min: number): number | null {
  const match = text.trim().replaceAll("_", "").match(/^(\d+\.?\d*|\.\d+)(?:e(\d+))?([kmb]?)$/i);
  if (match === null) return null;
  // One decimal exponent keeps "1.1k" exact, where 1.1 * 1000 would not be an integer.
  const exponent = Number(match[2] ?? 0) + SUFFIX_EXPONENT[match[3].toLowerCase()];
  const value = Number(`${match[1]}e${exponent}`);
  if (!Number.isSafeInteger(value) || value < min) return null;
  return value;
}
