/** Location of the reference files that tests read when they are present, and a skip helper. */

/** Directory of reference data beside the repository; absent files make tests skip. */
export const SHARED_DATA = new URL("../../../shared/data/", import.meta.url);

/** Returns the path of `name` under SHARED_DATA, or null when the file is missing. */
export function sharedFile(name: string): string | null {
  const path = new URL(name, SHARED_DATA).pathname;
  try {
    Deno.statSync(path);
    return path;
  } catch {
    return null;
  }
}
