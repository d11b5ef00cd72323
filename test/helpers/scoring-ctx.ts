// The scoring tests' name for the shared test context.
export { testContext as scoringContext } from './context.js';
