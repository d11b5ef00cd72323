// Child process of test/daemon/outbox.test.ts: store + MQTT adapter + outbox as the daemon wires them. The test sends
// actions over IPC while the broker is down and then SIGKILLs this process, to show nothing is lost in a crash.
import { createControlApi, MqttAdapter } from '../../adapters/mqtt.js';
import { Store } from '../../adapters/store.js';
import { Outbox } from '../../daemon/outbox.js';
import type { Action } from '../../core/types.js';
import { makeCtx } from './mqtt-side.js';

const ctx = makeCtx({
  'scanner.id': 'scanner-a',
  'mqtt.url': process.env.CHILD_MQTT_URL!,
  'mqtt.baseTopic': process.env.CHILD_BASE!,
  'mqtt.clientId': process.env.CHILD_CLIENT_ID!,
  'mqtt.reconnectMs': 100,
  'store.dir': process.env.CHILD_STATE_DIR!,
});
const store = new Store(ctx);
const adapter = new MqttAdapter(ctx, { statusProvider: () => ({ engine: 'classical' }), control: createControlApi(ctx, store) });
const outbox = new Outbox(ctx, { store, publisher: adapter });
const signal = new AbortController().signal;
await store.start(signal);
await adapter.start(signal);
await outbox.start(signal);
process.on('message', (m: { emit?: Action[]; query?: boolean }) => {
  for (const a of m.emit ?? []) ctx.events.emit('action', a);
  process.send!({ pending: store.outboxCount(), connected: adapter.connected });
});
process.send!({ ready: true });
