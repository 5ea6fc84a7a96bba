/** Helpers that return the thrown error, so a test can check its message. */
import assert from "node:assert/strict";

/** Awaits `fn` and returns its rejection, failing unless it is an instance of `type`. */
export async function rejectsWith<E extends Error>(
  fn: () => Promise<unknown>,
  type: new (...args: never[]) => E,
): Promise<E> {
  try {
    await fn();
  } catch (e) {
    assert.ok(e instanceof type, `expected ${type.name}, got ${e}`);
    return e as E;
  }
  assert.fail(`expected a ${type.name} rejection, but it resolved`);
}

/** Checks that an error message is one line and mentions each of `parts`. */
export function assertOneLineNaming(error: Error, ...parts: string[]): void {
  assert.ok(!error.message.includes("\n"), `message spans lines: ${error.message}`);
  for (const part of parts) {
    assert.ok(error.message.includes(part), `message lacks "${part}": ${error.message}`);
  }
}
