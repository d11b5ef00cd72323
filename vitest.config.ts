import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    globalSetup: ['test/global-setup.ts'],
    testTimeout: 60_000,
    hookTimeout: 60_000,
    pool: 'forks',
    // sockets, brokers and child daemons: keep the two CPU cores from being oversubscribed
    maxWorkers: 2,
    minWorkers: 1,
  },
});
