#!/usr/bin/env node
// Entry point of the `focusd` executable; the TypeScript sources are compiled to dist/ by `npm ci` (prepare).
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const main = fileURLToPath(new URL('../dist/cli/main.js', import.meta.url));
if (!existsSync(main)) {
  process.stderr.write('focusd: dist/ is missing; run `npm run build` (npm ci does it) first\n');
  process.exit(70);
}
// a closed stdout (focusd score | head) ends the command quietly instead of with an EPIPE stack trace
process.stdout.on('error', (err) => {
  if (err.code === 'EPIPE') process.exit(process.exitCode ?? 0);
  throw err;
});
const { main: run } = await import(main);
process.exitCode = await run(process.argv.slice(2));
