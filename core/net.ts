import { createServer } from 'node:net';

/** A TCP port that was free a moment ago on 127.0.0.1 (the demo, the benchmark and the tests bind to it next). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.unref();
    s.on('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
  });
}
