/** A token source over llm.c .bin shards on local disk. */
import { type BinShardInfo, readBinHeader, readBinTokens } from "./bin_shard.ts";
import { type SourceOptions, type TokenSource, tokenSplit } from "./source.ts";

const DEFAULT_VAL_TOKENS = 65_536;

/** Validates every shard's header up front, so a bad file fails before training starts. */
export async function openBinSource(
  spec: string,
  paths: string[],
  options: SourceOptions,
): Promise<TokenSource> {
  const shards: BinShardInfo[] = [];
  for (const path of paths) shards.push(await readBinHeader(path));
  const split = tokenSplit(paths, options.valTokens ?? DEFAULT_VAL_TOKENS);
  return {
    kind: "tokens",
    spec,
    shards,
    shardRole: split.shardRole,
    splitOf: split.splitOf,
    valEnd: split.valEnd,
    splitRule: split.description,
    readTokens: (shard, start, count) => readBinTokens(shards[shard], start, count),
  };
}
