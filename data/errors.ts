/**
 * Error for bad data input: a missing or malformed file, an unreachable URL, an invalid option.
 *
 * The message is one line that names the value and the fix, so CLIs print it
 * without a stack trace and exit with status 2.
 */
export class DataError extends Error {
  override name = "DataError";
}
