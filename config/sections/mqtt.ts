// MQTT output: broker, credentials, topics.
const topicOpts = (name: string, qos: 0 | 1 | 2, retain: boolean, what: string) => ({
  qos: { doc: `QoS of the ${name} topic (${what}).`, format: [0, 1, 2], default: qos },
  retain: { doc: `Retain flag of the ${name} topic.`, format: 'bool', default: retain },
});

export const mqtt = {
  mqtt: {
    url: {
      doc: 'Broker URL (mqtt://, mqtts://, ws://, wss://) or "embedded" to run an in-process broker on mqtt.embedded.port.',
      format: 'mqtt-url',
      default: 'embedded',
      // may hold a password: convict's messages do not repeat its value
      sensitive: true,
      env: 'FOCUSD_MQTT_URL',
      arg: 'mqtt-url',
    },
    embedded: {
      host: { doc: 'Address the embedded broker listens on.', format: String, default: '127.0.0.1', env: 'FOCUSD_MQTT_EMBEDDED_HOST' },
      port: {
        doc: 'Port of the embedded broker (not 1883, so it does not clash with a system Mosquitto).',
        format: 'port',
        default: 1884,
        env: 'FOCUSD_MQTT_EMBEDDED_PORT',
      },
      open: {
        doc: 'Let any client of the embedded broker publish control requests, actions and status (the behaviour before access control). Only for a broker reachable from loopback alone: refused with a non-loopback mqtt.embedded.host. Default: only focusd itself (credentials generated at every start) publishes under the base topic, and only mqtt.embedded.controlUsername with its password may publish control requests; anyone may subscribe.',
        format: 'bool',
        default: false,
        env: 'FOCUSD_MQTT_EMBEDDED_OPEN',
      },
      maxPacketBytes: {
        doc: 'Largest MQTT packet the embedded broker takes from any client (focusd itself included); a client announcing a larger one is disconnected before its body is read. focusd\'s own messages are a few KiB, control requests at most mqtt.control.maxRequestBytes.',
        format: 'positive-int',
        default: 1024 * 1024,
      },
      controlUsername: {
        doc: 'User name control clients give the embedded broker to publish control requests.',
        format: String,
        default: 'control',
        env: 'FOCUSD_MQTT_EMBEDDED_CONTROL_USERNAME',
      },
      controlPasswordFile: {
        doc: 'File holding the password of mqtt.embedded.controlUsername (first line). Empty: nobody may send control requests to the embedded broker (unless mqtt.embedded.open).',
        format: String,
        default: '',
        env: 'FOCUSD_MQTT_EMBEDDED_CONTROL_PASSWORD_FILE',
      },
    },
    control: {
      responsePrefix: {
        doc: 'Control answers are published only to the default <base>/control/response or to a response topic (MQTT 5 property or the body\'s response_topic) under this prefix; any other requested topic (focusd\'s own topics, other scanners, wildcards, NUL or control characters, invalid UTF-8, over 256 bytes) gets an invalid_response_topic answer on the default topic. Empty: <base>/control/response/. Set it ending in / (a client prefix such as lab/replies/).',
        format: String,
        default: '',
        env: 'FOCUSD_MQTT_CONTROL_RESPONSE_PREFIX',
      },
      maxRequestBytes: {
        doc: 'Largest control request payload accepted; larger ones are answered with reason too_large and not parsed.',
        format: 'positive-int',
        default: 16384,
      },
    },
    baseTopic: {
      doc: 'Prefix of every topic. Empty: focusd/<scanner.id>. At most 1024 UTF-8 bytes; no leading $ (broker-reserved), +, #, control characters (NUL, newline), empty levels or leading /.',
      format: String,
      default: '',
      env: 'FOCUSD_MQTT_BASE_TOPIC',
      arg: 'mqtt-base-topic',
    },
    clientId: { doc: 'MQTT client id. Empty: focusd-<scanner.id>.', format: String, default: '', env: 'FOCUSD_MQTT_CLIENT_ID' },
    username: { doc: 'MQTT user name.', format: String, default: '', env: 'FOCUSD_MQTT_USERNAME' },
    password: {
      doc: 'MQTT password. Prefer passwordFile or the systemd credential "mqtt-password".',
      format: String,
      default: '',
      sensitive: true,
      env: 'FOCUSD_MQTT_PASSWORD',
    },
    passwordFile: {
      doc: 'File holding the MQTT password (first line). Empty: $CREDENTIALS_DIRECTORY/mqtt-password when systemd LoadCredential provides it.',
      format: String,
      default: '',
      env: 'FOCUSD_MQTT_PASSWORD_FILE',
    },
    tls: {
      ca: { doc: 'PEM file of the CA that signed the broker certificate (mqtts/wss).', format: String, default: '', env: 'FOCUSD_MQTT_CA' },
      cert: { doc: 'PEM client certificate for mutual TLS; needs tls.key.', format: String, default: '', env: 'FOCUSD_MQTT_CERT' },
      key: { doc: 'PEM private key of the client certificate; needs tls.cert.', format: String, default: '', env: 'FOCUSD_MQTT_KEY' },
      rejectUnauthorized: { doc: 'Verify the broker certificate.', format: 'bool', default: true },
    },
    protocolVersion: {
      doc: 'MQTT protocol version: 5 (request/response control with correlation data and response topic as MQTT 5 properties) or 4 (MQTT 3.1.1; control requests carry response_topic/correlation_id in the JSON body). The embedded broker (aedes) speaks only 3.1.1, so mqtt.url=embedded always uses 4.',
      format: [4, 5],
      default: 5,
      env: 'FOCUSD_MQTT_PROTOCOL_VERSION',
    },
    connectTimeoutMs: { doc: 'Timeout of one connection attempt (TCP + CONNACK); start-up keeps retrying every reconnectMs until connected or aborted.', format: 'positive-int', default: 10000 },
    maxOfflineQueue: {
      doc: 'Most QoS 1/2 messages (status, error, control responses) MQTT.js may hold in memory while the broker is unreachable; beyond it messages are counted as publish failures and logged. QoS 0 messages (tile, stats) are not queued offline, they are counted as failures. Actions never depend on this queue: they wait in the SQLite outbox.',
      format: 'positive-int',
      default: 1000,
    },
    maxErrorBacklog: {
      doc: 'Most rejection messages (error topic) awaiting the broker at once. Rejections arrive as fast as a sender can send; beyond this many unacknowledged, further ones are counted (stats.rejected_by_reason, error_messages_suppressed) but not published one by one, and a rejections_suppressed message with the counts follows once the backlog has drained.',
      format: 'positive-int',
      default: 1000,
    },
    keepaliveS: { doc: 'MQTT keepalive in seconds.', format: 'positive-int', default: 30 },
    reconnectMs: { doc: 'Delay between reconnect attempts.', format: 'positive-int', default: 2000 },
    statsIntervalS: { doc: 'Seconds between stats messages; 0 disables them.', format: 'nat', default: 10, env: 'FOCUSD_STATS_INTERVAL_S' },
    topics: {
      status: topicOpts('status', 1, true, 'online/offline, last will'),
      tile: topicOpts('tile', 0, false, 'one message per scored tile'),
      action: topicOpts('action', 1, false, 're-acquisition and z-offset commands; QoS 1 so the outbox waits for PUBACK'),
      error: topicOpts('error', 1, false, 'rejected messages and skipped tiles'),
      stats: topicOpts('stats', 0, true, 'periodic counters'),
      control: topicOpts('control response', 1, false, 'answers to control requests; requests are subscribed with this QoS too'),
      report: topicOpts('report', 1, true, 'one message per drift report written: period, headline figures, alerts, file paths'),
    },
  },
};
