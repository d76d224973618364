"""Avro, TEXT and BYTES formats through the Kafka connector (Apache Kafka, started by
scripts/kafka.sh), with a real schema registry: Apicurio Registry 3 (scripts/apicurio.sh)
serving the Confluent-compatible API at /apis/ccompat/v7, with basic auth (user `sink`)
over HTTP and over HTTPS with its own CA. Messages are read back with confluent-kafka
(read_committed) and decoded with fastavro using the schema fetched from the registry
by the id in each message."""
import base64
import io
import json
import os
import struct
import urllib.request

import fastavro
import pytest

from conftest import one, services, sqlstate_of, wait_caught_up, wait_for, wait_started
from test_kafka import read_topic

KPORT = int(os.environ.get("PGSINK_TEST_KAFKA_PORT", "19093"))
BROKERS = f"127.0.0.1:{KPORT}"
KENV = dict(os.environ, KAFKA_PORT=str(KPORT), KAFKA_DATA="/tmp/pg_sink_test_kafka")
RPORT = int(os.environ.get("PGSINK_TEST_REGISTRY_PORT", "18084"))
RDATA = "/tmp/pg_sink_test_registry"
REGISTRY = f"http://127.0.0.1:{RPORT}/apis/ccompat/v7"
REGISTRY_TLS = f"https://127.0.0.1:{RPORT + 1}/apis/ccompat/v7"
RENV = dict(os.environ, APICURIO_PORT=str(RPORT), APICURIO_DATA=RDATA,
            APICURIO_USER="sink", APICURIO_PASSWORD="registry-pw")
AUTH = "Basic " + base64.b64encode(b"sink:registry-pw").decode()


@pytest.fixture(scope="module")
def servers(server):
    with services(("kafka.sh", KENV), ("apicurio.sh", RENV)):
        yield


def registry(method, path, body=None):
    req = urllib.request.Request(REGISTRY + path, method=method, data=None if body is None else json.dumps(body).encode(),
                                 headers={"Authorization": AUTH, "Content-Type": "application/vnd.schemaregistry.v1+json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        body = e.read()
        return e.code, json.loads(body) if body else None


def decode(data):
    """Confluent wire format → (schema id, decoded record)."""
    assert data[0] == 0, "magic byte"
    (sid,) = struct.unpack(">I", data[1:5])
    status, body = registry("GET", f"/schemas/ids/{sid}")
    assert status == 200
    schema = fastavro.parse_schema(json.loads(body["schema"]))
    return sid, fastavro.schemaless_reader(io.BytesIO(data[5:]), schema)


@pytest.fixture
def csr(db, servers):
    db.execute("SELECT sink.create_secret('csr_password', 'registry-pw', if_not_exists => true)")
    db.execute("SELECT sink.create_connection('csr_connection', 'confluent_schema_registry', %s::jsonb, if_not_exists => true)",
               (json.dumps({"URL": REGISTRY, "USERNAME": "sink", "PASSWORD": {"secret": "csr_password"}}),))
    yield "csr_connection"


def test_doc_on_example_is_published_exactly_and_messages_decode(db, csr):
    # The seed's example, verbatim.
    db.execute("DROP TABLE IF EXISTS t")
    db.execute("CREATE TABLE t (key int NOT NULL, value text NOT NULL)")
    db.execute("ALTER TABLE t ADD PRIMARY KEY (key)")
    db.execute("COMMENT ON TABLE t IS 'SQL comment on t'")
    db.execute("COMMENT ON COLUMN t.value IS 'SQL comment on t.value'")
    db.execute("INSERT INTO t VALUES (1, 'one'), (2, 'two')")
    opts = {
        "brokers": BROKERS, "TOPIC": "doc-commont-example", "TOPIC PARTITION COUNT": 3, "csr_connection": csr,
        "DOC ON TYPE t": "Top-level comment for container record in both key and value schemas",
        "KEY DOC ON COLUMN t.key": "Comment on column only in key schema",
        "VALUE DOC ON COLUMN t.key": "Comment on column only in value schema",
        "KEY COMPATIBILITY LEVEL": "BACKWARD", "VALUE COMPATIBILITY LEVEL": "BACKWARD_TRANSITIVE",
    }
    db.execute("SELECT sink.create_sink('docs_sink', 't', 'kafka', %s::jsonb, envelope => 'upsert', format => 'avro', key => ARRAY['key'])",
               (json.dumps(opts),))
    wait_started(db, "docs_sink")
    db.execute("INSERT INTO t VALUES (3, 'three')")
    db.execute("UPDATE t SET value = 'uno' WHERE key = 1")
    db.execute("DELETE FROM t WHERE key = 2")
    wait_caught_up(db, "docs_sink")

    status, key = registry("GET", "/subjects/doc-commont-example-key/versions/latest")
    assert status == 200
    assert json.loads(key["schema"]) == {
        "type": "record", "name": "row",
        "doc": "Top-level comment for container record in both key and value schemas",
        "fields": [{"name": "key", "type": "int", "doc": "Comment on column only in key schema"}]}
    status, value = registry("GET", "/subjects/doc-commont-example-value/versions/latest")
    assert json.loads(value["schema"]) == {
        "type": "record", "name": "envelope",
        "doc": "Top-level comment for container record in both key and value schemas",
        "fields": [{"name": "key", "type": "int", "doc": "Comment on column only in value schema"},
                   {"name": "value", "type": "string", "doc": "SQL comment on t.value"}]}
    assert registry("GET", "/config/doc-commont-example-key")[1] == {"compatibilityLevel": "BACKWARD"}
    assert registry("GET", "/config/doc-commont-example-value")[1] == {"compatibilityLevel": "BACKWARD_TRANSITIVE"}

    msgs = read_topic("doc-commont-example")
    state = {}
    for part, k, v, hdrs in msgs:
        kid, kdoc = decode(k)
        assert kid == key["id"]
        # Default partitioning hashes the key without the 5 framing bytes.
        assert part == int(one(db, "SELECT sink.seahash(%s::bytea) %% 3", k[5:])), (part, k)
        if v is None:
            state.pop(kdoc["key"], None)
        else:
            vid, vdoc = decode(v)
            assert vid == value["id"]
            state[kdoc["key"]] = vdoc["value"]
        assert "pg_sink-lsn" in hdrs
    assert state == dict(db.execute("SELECT key, value FROM t").fetchall())
    db.execute("SELECT sink.drop_sink('docs_sink')")


def test_schema_evolution_registers_versions_and_incompatible_changes_stop_the_sink(db, csr):
    db.execute("DROP TABLE IF EXISTS evo")
    db.execute("CREATE TABLE evo (id int PRIMARY KEY, a text, n numeric(8,2), at timestamptz, tags text[])")
    db.execute("INSERT INTO evo VALUES (1, 'x', 1.50, '2024-01-01 00:00:00+00', '{p,q}')")
    # Debezium in Avro, nullable fields defaulting to null: adding a column is
    # BACKWARD compatible and registers version 2 before the first row that needs it.
    db.execute("SELECT sink.create_sink('evo_dbz', 'evo', 'kafka', %s::jsonb, envelope => 'debezium', format => 'avro')",
               (json.dumps({"brokers": BROKERS, "topic": "evo-dbz", "csr_connection": csr, "null_defaults": True}),))
    # Upsert without NULL DEFAULTS: the same change is incompatible and stops it.
    db.execute("SELECT sink.create_sink('evo_up', 'evo', 'kafka', %s::jsonb, envelope => 'upsert', format => 'avro')",
               (json.dumps({"brokers": BROKERS, "topic": "evo-up", "csr_connection": csr}),))
    wait_started(db, "evo_dbz")
    wait_started(db, "evo_up")
    db.execute("INSERT INTO evo VALUES (2, NULL, -3.25, NULL, NULL)")
    wait_caught_up(db, "evo_dbz")
    wait_caught_up(db, "evo_up")
    db.execute("ALTER TABLE evo ADD COLUMN extra text")
    db.execute("INSERT INTO evo VALUES (3, 'y', 0, '1999-12-31 23:59:59.5+00', '{}', 'new')")
    db.execute("UPDATE evo SET extra = 'e1' WHERE id = 1")
    wait_caught_up(db, "evo_dbz")
    assert registry("GET", "/subjects/evo-dbz-value/versions")[1] == [1, 2]

    events = [decode(v)[1] for _, _, v, _ in read_topic("evo-dbz")]
    assert [e["op"] for e in events] == ["r", "c", "c", "u"]
    assert events[1]["after"] == {"id": 2, "a": None, "n": __import__("decimal").Decimal("-3.25"), "at": None, "tags": None}
    assert events[2]["after"]["extra"] == "new" and events[2]["after"]["tags"] == []
    assert str(events[2]["after"]["at"]) == "1999-12-31 23:59:59.500000+00:00"
    assert events[3]["before"] is None and events[3]["after"]["extra"] == "e1" and events[3]["after"]["tags"] == ["p", "q"]

    row = wait_for(lambda: db.execute("SELECT state, last_error FROM sink.status WHERE name = 'evo_up' AND state = 'failed'").fetchone(),
                   timeout=60, what="the incompatible schema to stop the sink")
    assert "incompatible" in row[1], row
    assert registry("GET", "/subjects/evo-up-value/versions")[1] == [1]
    # Nothing skipped: relax the subject's level, resume, and every row arrives.
    assert registry("PUT", "/config/evo-up-value", {"compatibility": "NONE"})[0] == 200
    db.execute("SELECT sink.resume_sink('evo_up')")
    wait_caught_up(db, "evo_up")
    state = {}
    for _, k, v, _ in read_topic("evo-up"):
        state[decode(k)[1]["id"]] = decode(v)[1]
    assert sorted(state) == [1, 2, 3]
    assert state[3]["extra"] == "new" and state[1]["extra"] == "e1"
    for s in ("evo_dbz", "evo_up"):
        db.execute("SELECT sink.drop_sink(%s)", (s,))


def test_text_and_bytes_formats(db, servers):
    db.execute("DROP TABLE IF EXISTS words")
    db.execute("CREATE TABLE words (w text PRIMARY KEY)")
    db.execute("SELECT sink.create_sink('words_sink', 'words', 'kafka', %s::jsonb, envelope => 'upsert', snapshot => false)",
               (json.dumps({"brokers": BROKERS, "topic": "words", "key_format": "text", "value_format": "bytes"}),))
    wait_started(db, "words_sink")
    db.execute("INSERT INTO words VALUES ('hello'), ('wörld')")
    db.execute("DELETE FROM words WHERE w = 'hello'")
    wait_caught_up(db, "words_sink")
    msgs = [(k, v) for _, k, v, _ in read_topic("words")]
    assert msgs == [(b"hello", b"hello"), ("wörld".encode(), "wörld".encode()), (b"hello", None)]
    db.execute("SELECT sink.drop_sink('words_sink')")

    db.execute("DROP TABLE IF EXISTS blobs")
    db.execute("CREATE TABLE blobs (id int PRIMARY KEY, raw bytea, arr int[])")
    cases = [
        ("blobs", {"format": "text"}, "upsert", "requires a single column"),
        ("blobs", {"value_format": "bytes"}, "upsert", "requires a single column"),
        ("words", {"format": "text"}, "debezium", "cannot be encoded as TEXT"),
    ]
    for table, fmt, env, msg in cases:
        st, m, detail, hint = sqlstate_of(db, "SELECT sink.create_sink('bad_fmt', %s, 'kafka', %s::jsonb, envelope => %s)",
                                          table, json.dumps({"brokers": BROKERS, "topic": "x", **fmt}), env)
        assert st == "22023" and msg in m, (fmt, st, m)
        assert detail or hint
    # BYTES of one scalar column is fine; of an array it is refused.
    db.execute("DROP TABLE IF EXISTS arrs")
    db.execute("CREATE TABLE arrs (a int[] PRIMARY KEY)")
    st, m, _, hint = sqlstate_of(db, "SELECT sink.create_sink('bad_fmt', 'arrs', 'kafka', %s::jsonb, envelope => 'upsert')",
                                 json.dumps({"brokers": BROKERS, "topic": "x", "key_format": "bytes", "value_format": "json"}))
    assert st == "22023" and "only supports scalar types" in m and hint, m
    assert one(db, "SELECT count(*) FROM sink.sinks WHERE name = 'bad_fmt'") == 0


def test_bad_avro_and_registry_options(db, csr):
    db.execute("DROP TABLE IF EXISTS badav")
    db.execute("CREATE TABLE badav (id int PRIMARY KEY, v text)")
    base = {"brokers": BROKERS, "topic": "badav"}
    cases = [
        ({"format": "avro", "schema.registry": "ftp://localhost:1"}, "22023", "invalid schema registry URL"),
        ({"format": "avro", "csr_connection": csr, "avro_key_fullname": "k.K"}, "22023", "requires AVRO VALUE FULLNAME"),
        ({"format": "avro", "csr_connection": csr, "avro_value_fullname": "1bad"}, "22023", "avro_value_fullname"),
        ({"format": "avro", "csr_connection": csr, "key_compatibility_level": "SOMETIMES"}, "22023", "key_compatibility_level"),
        ({"format": "json", "csr_connection": csr}, "22023", "require FORMAT AVRO"),
        ({"format": "avro", "key_compatibility_level": "NONE"}, "22023", "require a schema registry"),
        ({"format": "avro", "schema.registry.password": "p", "schema.registry": REGISTRY}, "22023", "requires a username"),
        ({"format": "avro", "csr_connection": csr, "doc_on_table_badav": "x"}, "22023", "invalid DOC ON option"),
        ({"format": "avro", "csr_connection": "nope"}, "42704", 'connection "nope" does not exist'),
        ({"format": "avro", "schema.registry": "http://127.0.0.1:1"}, "08000", "schema registry request"),
        ({"format": "avro", "schema.registry": REGISTRY, "schema.registry.username": "sink", "schema.registry.password": "wrong"}, "22000", "refused"),
        ({"format": "xml"}, "22023", "unknown format"),
    ]
    for extra, state, msg in cases:
        st, m, detail, hint = sqlstate_of(db, "SELECT sink.create_sink('bad_avro', 'badav', 'kafka', %s::jsonb, envelope => 'upsert')",
                                          json.dumps({**base, **extra}))
        assert st == state and msg in m, (extra, st, m)
        assert detail or hint, m
        assert one(db, "SELECT count(*) FROM sink.sinks WHERE name = 'bad_avro'") == 0
    # A registry connection is checked when it is created.
    st, m, _, _ = sqlstate_of(db, "SELECT sink.create_connection('csr_bad', 'confluent_schema_registry', %s::jsonb)",
                              json.dumps({"url": REGISTRY, "username": "sink", "password": "wrong"}))
    assert st == "22000" and "refused" in m, m
    st, m, _, hint = sqlstate_of(db, "SELECT sink.create_connection('csr_bad', 'confluent_schema_registry', %s::jsonb)",
                                 json.dumps({"url": REGISTRY, "tls": "yes"}))
    assert st == "22023" and 'unknown option "tls"' in m and hint, m
    assert one(db, "SELECT count(*) FROM sink.connections WHERE name = 'csr_bad'") == 0


def test_registry_over_tls_with_its_ca(db, servers):
    """The registry's HTTPS port: trusted through the connection's CA (the sink
    registers and its messages decode); a connection trusting another CA, or none,
    is refused when it is created."""
    with open(os.path.join(RDATA, "tls", "ca.pem")) as f:
        ca = f.read()
    with open(os.path.join(KENV["KAFKA_DATA"], "tls", "ca.pem")) as f:
        other_ca = f.read()  # the broker's CA, which did not sign the registry's certificate
    db.execute("SELECT sink.create_secret('csr_tls_pw', 'registry-pw', if_not_exists => true)")
    db.execute("SELECT sink.create_connection('csr_tls', 'confluent_schema_registry', %s::jsonb)",
               (json.dumps({"url": REGISTRY_TLS, "username": "sink", "password": {"secret": "csr_tls_pw"}, "ssl_certificate_authority": ca}),))
    db.execute("DROP TABLE IF EXISTS tls_t")
    db.execute("CREATE TABLE tls_t (id int PRIMARY KEY, v text)")
    db.execute("SELECT sink.create_sink('tls_sink', 'tls_t', 'kafka', %s::jsonb, envelope => 'upsert', format => 'avro', snapshot => false)",
               (json.dumps({"brokers": BROKERS, "topic": "tls-avro", "csr_connection": "csr_tls"}),))
    wait_started(db, "tls_sink")
    db.execute("INSERT INTO tls_t VALUES (1, 'a'), (2, 'b')")
    wait_caught_up(db, "tls_sink")
    assert sorted((decode(k)[1]["id"], decode(v)[1]["v"]) for _, k, v, _ in read_topic("tls-avro")) == [(1, "a"), (2, "b")]
    db.execute("SELECT sink.drop_sink('tls_sink')")
    db.execute("SELECT sink.drop_connection('csr_tls')")
    for opts in ({"url": REGISTRY_TLS, "username": "sink", "password": "registry-pw", "ssl_certificate_authority": other_ca},
                 {"url": REGISTRY_TLS, "username": "sink", "password": "registry-pw"}):
        st, m, detail, hint = sqlstate_of(db, "SELECT sink.create_connection('csr_tls_bad', 'confluent_schema_registry', %s::jsonb)", json.dumps(opts))
        assert st is not None and "schema registry" in m, (st, m, detail)
        assert detail or hint, m
        assert one(db, "SELECT count(*) FROM sink.connections WHERE name = 'csr_tls_bad'") == 0


def test_a_gated_avro_sink_refuses_a_change_its_registry_would_refuse(db, csr):
    """schema.gate with a schema registry: inside the ALTER TABLE, the table's new
    Avro schema is checked against the subject's latest version (BACKWARD here).
    Adding a column without NULL DEFAULTS is incompatible: the ALTER TABLE fails
    with the registry's verdict, the table and the subject stay as they were.
    Dropping a column is compatible: it goes through, and the sink registers
    version 2 with its next row and keeps running."""
    db.execute("DROP TABLE IF EXISTS gate_avro")
    db.execute("CREATE TABLE gate_avro (id int PRIMARY KEY, a text, b int)")
    db.execute("INSERT INTO gate_avro VALUES (1, 'x', 1)")
    db.execute("SELECT sink.create_sink('gate_avro', 'gate_avro', 'kafka', %s::jsonb, envelope => 'upsert', format => 'avro')",
               (json.dumps({"brokers": BROKERS, "topic": "gate-avro", "csr_connection": csr, "schema.gate": True,
                            "value_compatibility_level": "BACKWARD"}),))
    try:
        wait_started(db, "gate_avro")
        wait_caught_up(db, "gate_avro")
        assert registry("GET", "/subjects/gate-avro-value/versions")[1] == [1]
        st, msg, detail, hint = sqlstate_of(db, "ALTER TABLE gate_avro ADD COLUMN c text")
        assert st == "55000" and "gate_avro" in msg, (st, msg)
        assert "incompatible" in detail and "gate-avro-value" in detail, detail
        assert one(db, "SELECT count(*) FROM pg_attribute WHERE attrelid = 'gate_avro'::regclass AND attname = 'c'") == 0
        db.execute("ALTER TABLE gate_avro DROP COLUMN b")
        db.execute("INSERT INTO gate_avro VALUES (2, 'y')")
        wait_caught_up(db, "gate_avro")
        assert registry("GET", "/subjects/gate-avro-value/versions")[1] == [1, 2]
        assert one(db, "SELECT state FROM sink.status WHERE name = 'gate_avro'") == "running"
        values = [decode(v)[1] for _, _, v, _ in read_topic("gate-avro")]
        assert values[-1] == {"id": 2, "a": "y"}, values
    finally:
        db.execute("SELECT sink.drop_sink('gate_avro', if_exists => true)")
        db.execute("DROP TABLE IF EXISTS gate_avro")
