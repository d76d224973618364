/*
 * DebeziumOracle: runs Debezium's Postgres connector through the embedded engine
 * (io.debezium.engine.DebeziumEngine, JSON key and value) and writes the value of
 * every change event it emits as one JSON line (a tombstone is the line "null"),
 * flushed line by line. pg_sink's debezium envelope is compared with what this
 * writes (tests/integration/test_debezium_oracle.py). With --kafka-bootstrap it
 * produces the events to Kafka instead, as Debezium Server's Kafka sink does
 * (scripts/bench/kafka_peers.py times it against pg_sink).
 *
 *   scripts/debezium.sh run [--out=FILE] [--max-events=N] [--idle-ms=MS]
 *                           [--ready-file=FILE] [--with-keys] [--schemas]
 *                           [--kafka-bootstrap=HOST:PORT [--kafka-topic=T]
 *                            [--kafka.producer.property=value ...]]
 *                           [--debezium.option=value ...]
 *
 * Its own options:
 *   --out=FILE         where the lines go (default "-": stdout); appended to
 *   --max-events=N     stop after N events (0, the default: no limit)
 *   --idle-ms=MS       stop when no event arrived for MS milliseconds (counted from
 *                      the start until the first event; 0, the default: never)
 *   --ready-file=FILE  written (with the slot name) once the connector's task has
 *                      started, i.e. its replication slot and publication exist
 *   --with-keys        write {"destination":..,"key":..,"value":..} lines instead
 *   --schemas          key/value.converter.schemas.enable=true (JSON with schema)
 *   --kafka-bootstrap=HOST:PORT
 *                      produce every event to Kafka (a KafkaProducer from
 *                      kafka-clients, which debezium-embedded brings) instead of
 *                      writing lines; not together with --out. Key and value are
 *                      the converter's JSON (UTF-8); a tombstone has a null value.
 *                      Each batch from the engine is sent asynchronously, then
 *                      awaited (every send acknowledged) before its events are
 *                      marked processed, as Debezium Server's Kafka sink does; a
 *                      failed send fails the engine (exit status 1). Events count
 *                      towards --max-events once acknowledged.
 *   --kafka-topic=T    the topic for every event (default: the event's
 *                      destination, topic.prefix.schema.table)
 *   --kafka.NAME=VALUE a producer property. Defaults: acks all,
 *                      enable.idempotence true, linger.ms 5, batch.size 1048576,
 *                      compression.type none (pg_sink's Kafka sink's settings:
 *                      librdkafka's batch.size is 1,000,000 bytes), client.id
 *                      pg_sink-debezium-oracle
 * Every other --key=value is passed to Debezium's configuration as it is. The
 * defaults (each can be overridden) are: connector.class PostgresConnector,
 * plugin.name pgoutput, slot.name and publication.name pg_sink_dbz_oracle,
 * publication.autocreate.mode filtered, snapshot.mode initial,
 * database.hostname 127.0.0.1, database.port 5432, database.user postgres,
 * database.dbname postgres, topic.prefix oracle, offset.storage
 * FileOffsetBackingStore with offset.storage.file.filename FILE.offsets (next to
 * --out; in java.io.tmpdir for stdout), offset.flush.interval.ms 1000,
 * key/value.converter.schemas.enable false. Everything else (decimal.handling.mode,
 * time.precision.mode, tombstones.on.delete, ...) stays at Debezium's defaults.
 *
 * It stops cleanly (engine closed, offsets committed, output flushed) on SIGTERM or
 * SIGINT, after --max-events, or after --idle-ms. Exit status: 0 stopped after
 * --max-events or --idle-ms, 1 the engine failed, 2 bad arguments, 3 the idle timeout
 * ended the run before --max-events events had arrived; after SIGTERM the JVM's own
 * 143 (SIGINT 130). The replication slot stays unless slot.drop.on.stop=true; the
 * publication stays either way.
 */
package pgsink.tools;

import java.io.BufferedWriter;
import java.io.IOException;
import java.io.OutputStreamWriter;
import java.io.Writer;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.nio.file.StandardOpenOption;
import java.time.Duration;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.concurrent.atomic.AtomicLong;
import java.util.concurrent.atomic.AtomicReference;

import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.common.serialization.ByteArraySerializer;

import io.debezium.engine.ChangeEvent;
import io.debezium.engine.DebeziumEngine;
import io.debezium.engine.format.Json;

public final class DebeziumOracle {

    private static final String SLOT = "pg_sink_dbz_oracle";

    /** Why the run ended. */
    private enum Stop { NONE, MAX_EVENTS, IDLE, SIGNAL, ENGINE }

    private final Writer out;
    private final KafkaProducer<byte[], byte[]> producer;
    private final String kafkaTopic;
    private final long maxEvents;
    private final boolean withKeys;
    private final AtomicLong written = new AtomicLong();
    private final AtomicLong lastEventNanos = new AtomicLong(System.nanoTime());
    private final AtomicReference<Stop> stop = new AtomicReference<>(Stop.NONE);
    private final CountDownLatch stopRequested = new CountDownLatch(1);
    private final AtomicReference<Throwable> engineError = new AtomicReference<>();
    private final AtomicBoolean engineFailed = new AtomicBoolean();

    private DebeziumOracle(Writer out, KafkaProducer<byte[], byte[]> producer, String kafkaTopic,
                           long maxEvents, boolean withKeys) {
        this.out = out;
        this.producer = producer;
        this.kafkaTopic = kafkaTopic;
        this.maxEvents = maxEvents;
        this.withKeys = withKeys;
    }

    private void requestStop(Stop why) {
        if (stop.compareAndSet(Stop.NONE, why)) {
            stopRequested.countDown();
        }
    }

    /** One batch from the engine, in order: written, flushed, then marked processed. */
    private void handleBatch(List<ChangeEvent<String, String>> records,
                             DebeziumEngine.RecordCommitter<ChangeEvent<String, String>> committer)
            throws InterruptedException {
        if (producer != null) {
            produceBatch(records, committer);
            return;
        }
        for (ChangeEvent<String, String> r : records) {
            if (stop.get() != Stop.NONE) {
                break;
            }
            try {
                synchronized (out) {
                    out.write(line(r));
                    out.write('\n');
                    out.flush();
                }
            } catch (IOException e) {
                throw new IllegalStateException("cannot write an event: " + e.getMessage(), e);
            }
            lastEventNanos.set(System.nanoTime());
            committer.markProcessed(r);
            if (written.incrementAndGet() == maxEvents) {
                log("seen " + maxEvents + " events, stopping");
                requestStop(Stop.MAX_EVENTS);
            }
        }
        committer.markBatchFinished();
    }

    /**
     * One batch to Kafka: every event sent (asynchronously, in order), then all
     * acknowledgements awaited, then the events marked processed. A failed send
     * fails the batch, and so the engine.
     */
    private void produceBatch(List<ChangeEvent<String, String>> records,
                              DebeziumEngine.RecordCommitter<ChangeEvent<String, String>> committer)
            throws InterruptedException {
        int n = records.size();
        if (maxEvents > 0) {
            n = (int) Math.max(0, Math.min(n, maxEvents - written.get()));
        }
        if (stop.get() != Stop.NONE) {
            n = 0;
        }
        CountDownLatch acked = new CountDownLatch(n);
        AtomicReference<Exception> failed = new AtomicReference<>();
        for (int i = 0; i < n; i++) {
            ChangeEvent<String, String> r = records.get(i);
            String topic = kafkaTopic != null ? kafkaTopic : r.destination();
            byte[] key = r.key() == null ? null : r.key().getBytes(StandardCharsets.UTF_8);
            byte[] value = r.value() == null ? null : r.value().getBytes(StandardCharsets.UTF_8);
            producer.send(new ProducerRecord<>(topic, key, value), (metadata, error) -> {
                if (error != null) {
                    failed.compareAndSet(null, error);
                }
                acked.countDown();
            });
        }
        acked.await();
        Exception e = failed.get();
        if (e != null) {
            throw new IllegalStateException("cannot produce an event to Kafka: " + e.getMessage(), e);
        }
        for (int i = 0; i < n; i++) {
            committer.markProcessed(records.get(i));
        }
        if (n > 0) {
            lastEventNanos.set(System.nanoTime());
            if (written.addAndGet(n) == maxEvents) {
                log("seen " + maxEvents + " events, stopping");
                requestStop(Stop.MAX_EVENTS);
            }
        }
        committer.markBatchFinished();
    }

    private String line(ChangeEvent<String, String> r) {
        String value = r.value() == null ? "null" : r.value();
        if (!withKeys) {
            return value;
        }
        String key = r.key() == null ? "null" : r.key();
        return "{\"destination\":" + quote(r.destination()) + ",\"key\":" + key + ",\"value\":" + value + "}";
    }

    private static String quote(String s) {
        if (s == null) {
            return "null";
        }
        StringBuilder b = new StringBuilder("\"");
        for (char c : s.toCharArray()) {
            switch (c) {
                case '"' -> b.append("\\\"");
                case '\\' -> b.append("\\\\");
                default -> {
                    if (c < 0x20) {
                        b.append(String.format("\\u%04x", (int) c));
                    } else {
                        b.append(c);
                    }
                }
            }
        }
        return b.append('"').toString();
    }

    private static void log(String msg) {
        System.err.println("[debezium-oracle] " + msg);
        System.err.flush();
    }

    private static void usage(String why) {
        usage(why, 2);
    }

    private static void usage(String why, int status) {
        log(why);
        log("usage: DebeziumOracle [--out=FILE|-] [--max-events=N] [--idle-ms=MS] [--ready-file=FILE] "
                + "[--with-keys] [--schemas] [--kafka-bootstrap=HOST:PORT [--kafka-topic=T] [--kafka.property=value ...]] "
                + "[--debezium.option=value ...]");
        System.exit(status);
    }

    private static long number(String name, String value) {
        try {
            long n = Long.parseLong(value);
            if (n < 0) {
                usage(name + " must not be negative, not " + value);
            }
            return n;
        } catch (NumberFormatException e) {
            usage(name + " must be a number, not '" + value + "'");
            return 0;
        }
    }

    public static void main(String[] args) throws Exception {
        // slf4j-simple: INFO to stderr, Kafka's own chatter only from WARN up.
        defaultProperty("org.slf4j.simpleLogger.logFile", "System.err");
        defaultProperty("org.slf4j.simpleLogger.defaultLogLevel", "info");
        defaultProperty("org.slf4j.simpleLogger.showDateTime", "true");
        defaultProperty("org.slf4j.simpleLogger.dateTimeFormat", "HH:mm:ss.SSS");
        defaultProperty("org.slf4j.simpleLogger.log.org.apache.kafka", "warn");

        String outPath = "-";
        String readyFile = null;
        String kafkaBootstrap = null;
        String kafkaTopic = null;
        boolean outGiven = false;
        Map<String, String> producerProps = new LinkedHashMap<>();
        long maxEvents = 0;
        long idleMs = 0;
        boolean withKeys = false;
        boolean schemas = false;
        Map<String, String> given = new LinkedHashMap<>();
        for (String arg : args) {
            if (arg.equals("--help") || arg.equals("-h")) {
                usage("Debezium's Postgres connector (embedded engine), change events as JSON lines", 0);
            }
            if (!arg.startsWith("--")) {
                usage("arguments are --key=value, not '" + arg + "'");
            }
            int eq = arg.indexOf('=');
            String key = eq < 0 ? arg.substring(2) : arg.substring(2, eq);
            String value = eq < 0 ? null : arg.substring(eq + 1);
            switch (key) {
                case "with-keys" -> withKeys = value == null || Boolean.parseBoolean(value);
                case "schemas" -> schemas = value == null || Boolean.parseBoolean(value);
                default -> {
                    if (value == null) {
                        usage("--" + key + " needs a value (--" + key + "=...)");
                    }
                    switch (key) {
                        case "out" -> {
                            outPath = value;
                            outGiven = true;
                        }
                        case "kafka-bootstrap" -> kafkaBootstrap = value;
                        case "kafka-topic" -> kafkaTopic = value;
                        case "max-events" -> maxEvents = number("--max-events", value);
                        case "idle-ms" -> idleMs = number("--idle-ms", value);
                        case "ready-file" -> readyFile = value;
                        default -> {
                            if (key.startsWith("kafka.") && key.length() > "kafka.".length()) {
                                producerProps.put(key.substring("kafka.".length()), value);
                            } else {
                                given.put(key, value);
                            }
                        }
                    }
                }
            }
        }

        if (kafkaBootstrap != null && outGiven) {
            usage("--out and --kafka-bootstrap exclude each other");
        }
        if (kafkaBootstrap == null && (kafkaTopic != null || !producerProps.isEmpty())) {
            usage("--kafka-topic and --kafka.* need --kafka-bootstrap");
        }

        Properties props = new Properties();
        props.setProperty("name", "pg_sink-debezium-oracle");
        props.setProperty("connector.class", "io.debezium.connector.postgresql.PostgresConnector");
        props.setProperty("plugin.name", "pgoutput");
        props.setProperty("slot.name", SLOT);
        props.setProperty("publication.name", SLOT);
        props.setProperty("publication.autocreate.mode", "filtered");
        props.setProperty("snapshot.mode", "initial");
        props.setProperty("database.hostname", "127.0.0.1");
        props.setProperty("database.port", "5432");
        props.setProperty("database.user", "postgres");
        props.setProperty("database.password", "");
        props.setProperty("database.dbname", "postgres");
        props.setProperty("topic.prefix", "oracle");
        props.setProperty("offset.storage", "org.apache.kafka.connect.storage.FileOffsetBackingStore");
        props.setProperty("offset.flush.interval.ms", "1000");
        props.setProperty("key.converter.schemas.enable", Boolean.toString(schemas));
        props.setProperty("value.converter.schemas.enable", Boolean.toString(schemas));
        props.putAll(given);
        if (!props.containsKey("offset.storage.file.filename")) {
            Path offsets = outPath.equals("-")
                    ? Paths.get(System.getProperty("java.io.tmpdir"), "debezium-oracle-" + props.getProperty("slot.name") + ".offsets")
                    : Paths.get(outPath + ".offsets");
            props.setProperty("offset.storage.file.filename", offsets.toString());
        }

        KafkaProducer<byte[], byte[]> producer = null;
        String outDesc = outPath;
        if (kafkaBootstrap != null) {
            Properties p = new Properties();
            p.setProperty(ProducerConfig.ACKS_CONFIG, "all");
            p.setProperty(ProducerConfig.ENABLE_IDEMPOTENCE_CONFIG, "true");
            p.setProperty(ProducerConfig.LINGER_MS_CONFIG, "5");
            p.setProperty(ProducerConfig.BATCH_SIZE_CONFIG, "1048576");
            p.setProperty(ProducerConfig.COMPRESSION_TYPE_CONFIG, "none");
            p.setProperty(ProducerConfig.CLIENT_ID_CONFIG, "pg_sink-debezium-oracle");
            p.putAll(producerProps);
            p.setProperty(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, kafkaBootstrap);
            producer = new KafkaProducer<>(p, new ByteArraySerializer(), new ByteArraySerializer());
            outDesc = "kafka " + kafkaBootstrap + " topic " + (kafkaTopic != null ? kafkaTopic : "(each event's destination)")
                    + " (acks " + p.getProperty(ProducerConfig.ACKS_CONFIG) + ", linger.ms "
                    + p.getProperty(ProducerConfig.LINGER_MS_CONFIG) + ", batch.size "
                    + p.getProperty(ProducerConfig.BATCH_SIZE_CONFIG) + ", compression "
                    + p.getProperty(ProducerConfig.COMPRESSION_TYPE_CONFIG) + ")";
        }
        // In Kafka mode nothing is written: a writer on stdout stays empty.
        Writer writer = producer != null || outPath.equals("-")
                ? new BufferedWriter(new OutputStreamWriter(System.out, StandardCharsets.UTF_8))
                : Files.newBufferedWriter(Paths.get(outPath), StandardCharsets.UTF_8,
                        StandardOpenOption.CREATE, StandardOpenOption.APPEND, StandardOpenOption.WRITE);
        DebeziumOracle oracle = new DebeziumOracle(writer, producer, kafkaTopic, maxEvents, withKeys);
        log("slot " + props.getProperty("slot.name") + ", publication " + props.getProperty("publication.name")
                + ", snapshot.mode " + props.getProperty("snapshot.mode") + ", tables "
                + props.getProperty("table.include.list", "(all)") + ", offsets "
                + props.getProperty("offset.storage.file.filename") + ", out " + outDesc);

        final String ready = readyFile;
        final String slot = props.getProperty("slot.name");
        DebeziumEngine<ChangeEvent<String, String>> engine = DebeziumEngine.create(Json.class)
                .using(props)
                .using(new DebeziumEngine.ConnectorCallback() {
                    @Override
                    public void taskStarted() {
                        log("connector task started");
                        if (ready != null) {
                            try {
                                Files.writeString(Paths.get(ready), slot + "\n", StandardCharsets.UTF_8);
                            } catch (IOException e) {
                                log("cannot write " + ready + ": " + e.getMessage());
                            }
                        }
                    }
                })
                .using((success, message, error) -> {
                    if (!success) {
                        oracle.engineFailed.set(true);
                        oracle.engineError.set(error);
                        log("engine failed: " + message);
                    }
                    oracle.requestStop(Stop.ENGINE);
                })
                .notifying(oracle::handleBatch)
                .build();

        ExecutorService executor = Executors.newSingleThreadExecutor(r -> {
            Thread t = new Thread(r, "debezium-engine");
            t.setDaemon(true);
            return t;
        });
        CountDownLatch cleanedUp = new CountDownLatch(1);
        AtomicBoolean signalled = new AtomicBoolean();
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            signalled.set(true);
            oracle.requestStop(Stop.SIGNAL);
            try {
                // Let main close the engine and flush the output.
                cleanedUp.await(60, TimeUnit.SECONDS);
            } catch (InterruptedException ignored) {
                Thread.currentThread().interrupt();
            }
        }, "debezium-oracle-shutdown"));

        executor.execute(engine);

        long idleNanos = TimeUnit.MILLISECONDS.toNanos(idleMs);
        while (!oracle.stopRequested.await(100, TimeUnit.MILLISECONDS)) {
            if (idleMs > 0 && System.nanoTime() - oracle.lastEventNanos.get() > idleNanos) {
                log("no event for " + idleMs + " ms, stopping");
                oracle.requestStop(Stop.IDLE);
            }
        }

        int status;
        try {
            try {
                engine.close();
            } catch (IllegalStateException alreadyStopped) {
                // The engine ended by itself (an error, reported above).
            }
            executor.shutdown();
            if (!executor.awaitTermination(60, TimeUnit.SECONDS)) {
                log("the engine did not stop within 60 s");
            }
        } finally {
            if (producer != null) {
                // Every event marked processed was acknowledged already.
                producer.close(Duration.ofSeconds(30));
            }
            synchronized (writer) {
                writer.flush();
                if (producer == null && !outPath.equals("-")) {
                    writer.close();
                }
            }
            Stop why = oracle.stop.get();
            if (oracle.engineFailed.get()) {
                status = 1;
                Throwable e = oracle.engineError.get();
                if (e != null) {
                    e.printStackTrace(System.err);
                }
            } else if (why == Stop.ENGINE && !signalled.get()) {
                status = 1;
                log("the engine stopped by itself");
            } else if (why == Stop.IDLE && maxEvents > 0) {
                status = 3;
            } else {
                status = 0;
            }
            log("stopped (" + why.name().toLowerCase().replace('_', ' ') + "), " + oracle.written.get() + " events written");
            cleanedUp.countDown();
        }
        if (!signalled.get()) {
            // Kafka Connect and JDBC threads may linger; the output is closed.
            System.exit(status);
        }
    }

    private static void defaultProperty(String name, String value) {
        if (System.getProperty(name) == null) {
            System.setProperty(name, value);
        }
    }
}
