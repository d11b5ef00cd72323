// Test-file scope on the shared broker (vitest only: mqtt-side.ts stays free of vitest for forked child processes).
import mqtt from 'mqtt';
import { afterEach } from 'vitest';
import type { Component } from '../../core/lifecycle.js';
import type { Collector } from './mqtt-side.js';
import { MOSQUITTO_URL } from './net.js';

/**
 * Per test file on the shared broker: what the tests start (components, collectors, base topics) is stopped after each
 * test, and the retained messages under each base topic are cleared, so no later test sees them.
 */
export function mqttTestScope(): { running: Component[]; collectors: Collector[]; bases: string[] } {
  const scope = { running: [] as Component[], collectors: [] as Collector[], bases: [] as string[] };
  afterEach(async () => {
    for (const c of scope.collectors.splice(0)) await c.close();
    while (scope.running.length) await scope.running.pop()!.stop().catch(() => undefined);
    if (scope.bases.length) {
      const c = await mqtt.connectAsync(MOSQUITTO_URL);
      for (const b of scope.bases.splice(0)) for (const t of ['status', 'stats', 'report']) await c.publishAsync(`${b}/${t}`, '', { retain: true, qos: 1 });
      await c.endAsync();
    }
  });
  return scope;
}
