"""sink.execute(): CREATE SINK / CONNECTION / SECRET / CREDENTIAL / DATA SINK / STREAM
statements in the dialects of Materialize, RisingWave and Kinetica (README: "Other systems'
DDL").

Every example statement of the seed pages (Materialize "CREATE SINK: Kafka/Redpanda",
RisingWave "Sink to AWS Kinesis", "Sink data to NATS", "Overview of data delivery",
Kinetica "Data Sinks") is kept below as a string constant exactly as the page prints
it; the tests only replace host names/ports with the local servers and fill in
placeholders (`<source, table or mview>`, `FROM ...`, `<BROKER_PASSWORD>`,
`your_access_key`, ...) with `str.replace`, so the verbatim text stays visible.

Servers: Apache Kafka (scripts/kafka.sh, 127.0.0.1:19093), Apicurio Registry
(scripts/apicurio.sh, 127.0.0.1:18084, basic auth sink/registry-pw), moto
(scripts/moto.sh, 127.0.0.1:15010) and nats-server (scripts/nats.sh, 127.0.0.1:14222).
Where a seed example names a server that cannot run here (Confluent Cloud hosts,
SSL/SASL brokers, kafka.abc.com, cloud object stores), the test turns
`pg_sink.validate_connections` off for its session, says why, and checks the
catalog instead.

Names: the seed's own object names are kept (kafka_connection, avro_sink, s1, ...);
everything the tests add is prefixed `d_` (the malformed-statement matrix uses
`d_m_`). Each test drops what it created, and `purge` removes leftovers first."""
import asyncio
import json
import os
import re
import time

import nats
import pytest
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic
from psycopg.rows import dict_row

from conftest import execute as run, execute_fails as fails, services
from conftest import NATS_PORT, connect, file_records, one, out_dir, wait_caught_up, wait_started
from test_avro import REGISTRY, RENV, decode, registry
from test_kafka import read_topic
from test_kinesis import ENDPOINT as KINESIS_ENDPOINT
from test_kinesis import MENV, make_stream, read_stream

KPORT = int(os.environ.get("PGSINK_TEST_KAFKA_PORT", "19093"))
BROKERS = f"127.0.0.1:{KPORT}"
KENV = dict(os.environ, KAFKA_PORT=str(KPORT), KAFKA_DATA="/tmp/pg_sink_test_kafka")
NATS_SERVER = f"127.0.0.1:{NATS_PORT}"
CONFLUENT_HOST = "unique-jellyfish-0000.us-east-1.aws.confluent.cloud"

# ----------------------------------------------------------------- seed examples
# Materialize, "CREATE SINK: Kafka/Redpanda" (materialize-create-sink-kafka.md).

MZ_BROKER_SSL = """CREATE SECRET kafka_ssl_key AS '<BROKER_SSL_KEY>';
CREATE SECRET kafka_ssl_crt AS '<BROKER_SSL_CRT>';

CREATE CONNECTION kafka_connection TO KAFKA (
    BROKER 'unique-jellyfish-0000.us-east-1.aws.confluent.cloud:9093',
    SSL KEY = SECRET kafka_ssl_key,
    SSL CERTIFICATE = SECRET kafka_ssl_crt
);
"""

MZ_BROKER_SASL = """CREATE SECRET kafka_password AS '<BROKER_PASSWORD>';

CREATE CONNECTION kafka_connection TO KAFKA (
    BROKER 'unique-jellyfish-0000.us-east-1.aws.confluent.cloud:9092',
    SASL MECHANISMS = 'SCRAM-SHA-256',
    SASL USERNAME = 'foo',
    SASL PASSWORD = SECRET kafka_password
);
"""

MZ_CSR_SSL = """CREATE SECRET csr_ssl_crt AS '<CSR_SSL_CRT>';
CREATE SECRET csr_ssl_key AS '<CSR_SSL_KEY>';
CREATE SECRET csr_password AS '<CSR_PASSWORD>';

CREATE CONNECTION csr_ssl TO CONFLUENT SCHEMA REGISTRY (
    URL 'unique-jellyfish-0000.us-east-1.aws.confluent.cloud:9093',
    SSL KEY = SECRET csr_ssl_key,
    SSL CERTIFICATE = SECRET csr_ssl_crt,
    USERNAME = 'foo',
    PASSWORD = SECRET csr_password
);
"""

MZ_CSR_BASIC_HTTP = """CREATE SECRET IF NOT EXISTS csr_username AS '<CSR_USERNAME>';
CREATE SECRET IF NOT EXISTS csr_password AS '<CSR_PASSWORD>';

CREATE CONNECTION csr_basic_http
  FOR CONFLUENT SCHEMA REGISTRY
  URL '<CONFLUENT_REGISTRY_URL>',
  USERNAME = SECRET csr_username,
  PASSWORD = SECRET csr_password;
"""

MZ_UPSERT_AVRO = """CREATE SINK avro_sink
  FROM <source, table or mview>
  INTO KAFKA CONNECTION kafka_connection (TOPIC 'test_avro_topic')
  KEY (key_col)
  FORMAT AVRO USING CONFLUENT SCHEMA REGISTRY CONNECTION csr_connection
  ENVELOPE UPSERT;
"""

MZ_UPSERT_JSON = """CREATE SINK json_sink
  FROM <source, table or mview>
  INTO KAFKA CONNECTION kafka_connection (TOPIC 'test_json_topic')
  KEY (key_col)
  FORMAT JSON
  ENVELOPE UPSERT;
"""

MZ_DEBEZIUM_AVRO = """CREATE SINK avro_sink
  FROM <source, table or mview>
  INTO KAFKA CONNECTION kafka_connection (TOPIC 'test_avro_topic')
  FORMAT AVRO USING CONFLUENT SCHEMA REGISTRY CONNECTION csr_connection
  ENVELOPE DEBEZIUM;
"""

MZ_TOPIC_CONFIGURATION = """CREATE SINK custom_topic_sink
  IN CLUSTER my_io_cluster
  FROM <source, table or mview>
  INTO KAFKA CONNECTION kafka_connection (
    TOPIC 'test_avro_topic',
    TOPIC PARTITION COUNT 4,
    TOPIC REPLICATION FACTOR 2,
    TOPIC CONFIG MAP['cleanup.policy' => 'compact']
  )
  FORMAT AVRO USING CONFLUENT SCHEMA REGISTRY CONNECTION csr_connection
  ENVELOPE UPSERT;
"""

MZ_COMPATIBILITY_LEVELS = """CREATE SINK compatibility_level_sink
  IN CLUSTER my_io_cluster
  FROM <source, table or mview>
  INTO KAFKA CONNECTION kafka_connection (
    TOPIC 'test_avro_topic',
  )
  FORMAT AVRO USING CONFLUENT SCHEMA REGISTRY CONNECTION csr_connection (
    KEY COMPATIBILITY LEVEL 'BACKWARD',
    VALUE COMPATIBILITY LEVEL 'BACKWARD_TRANSITIVE'
  )
  ENVELOPE UPSERT;
"""

MZ_DOCUMENTATION_COMMENTS = """CREATE TABLE t (key int NOT NULL, value text NOT NULL);
COMMENT ON TABLE t IS 'SQL comment on t';
COMMENT ON COLUMN t.value IS 'SQL comment on t.value';

CREATE SINK docs_sink
FROM t
INTO KAFKA CONNECTION kafka_connection (TOPIC 'doc-commont-example')
KEY (key)
FORMAT AVRO USING CONFLUENT SCHEMA REGISTRY CONNECTION csr_connection (
    DOC ON TYPE t = 'Top-level comment for container record in both key and value schemas',
    KEY DOC ON COLUMN t.key = 'Comment on column only in key schema',
    VALUE DOC ON COLUMN t.key = 'Comment on column only in value schema'
)
ENVELOPE UPSERT;
"""

MZ_DOCS_KEY_SCHEMA = """  {
    "type": "record",
    "name": "row",
    "doc": "Top-level comment for container record in both key and value schemas",
    "fields": [
      {
        "name": "key",
        "type": "int",
        "doc": "Comment on column only in key schema"
      }
    ]
  }
  """

MZ_DOCS_VALUE_SCHEMA = """  {
    "type": "record",
    "name": "envelope",
    "doc": "Top-level comment for container record in both key and value schemas",
    "fields": [
      {
        "name": "key",
        "type": "int",
        "doc": "Comment on column only in value schema"
      },
      {
        "name": "value",
        "type": "string",
        "doc": "SQL comment on t.value"
      }
    ]
  }
  """

MZ_CUSTOM_PARTITIONING = """CREATE SINK customer_orders
  FROM ...
  INTO KAFKA CONNECTION kafka_connection (
    TOPIC 'customer-orders',
    -- The partition hash includes only the customer ID, so the partition
    -- will be assigned only based on the customer ID.
    PARTITION BY = seahash(customer_id::text)
  )
  -- The key includes both the customer ID and order ID, so Kafka's compaction
  -- will keep only the latest message for each order ID.
  KEY (customer_id, order_id)
  FORMAT JSON
  ENVELOPE UPSERT;
"""

MZ_PARTITION_BY_SYNTAX = """-- General syntax.
CREATE SINK ... INTO KAFKA CONNECTION <name> (PARTITION BY = <expression>) ...;

-- Example.
CREATE SINK ... INTO KAFKA CONNECTION <name> (
    PARTITION BY = kafka_murmur2(name || address)
) ...;
"""

MZ_DEDUPED = """  -- For each row with the same key `k`, the `ORDER BY` clause ensures we
  -- keep the row with the largest value of `v`.
  CREATE MATERIALIZED VIEW deduped AS
  SELECT DISTINCT ON (k) v
  FROM original_input
  ORDER BY k, v DESC;

  -- Materialize can now prove that `k` is a unique key of `deduped`.
  CREATE SINK s
  FROM deduped
  INTO KAFKA CONNECTION kafka_connection (TOPIC 't')
  KEY (k)
  FORMAT JSON ENVELOPE UPSERT;
  """

MZ_NOT_ENFORCED = """  CREATE SINK s
  FROM original_input
  INTO KAFKA CONNECTION kafka_connection (TOPIC 't')
  -- We have outside knowledge that `k` is a unique key of `original_input`, but
  -- Materialize cannot prove this, so we disable its key uniqueness check.
  KEY (k) NOT ENFORCED
  FORMAT JSON ENVELOPE UPSERT;
  """

# RisingWave, "Sink to AWS Kinesis" (risingwave-sink-to-kinesis.md).

RW_KINESIS_SYNTAX = """CREATE SINK [ IF NOT EXISTS ] sink_name
[FROM sink_from | AS select_query]
WITH (
   connector='kinesis',
   connector_parameter = 'value', ...
);
"""

RW_KINESIS_EXAMPLE = """CREATE SINK s1 FROM t WITH (
 connector = 'kinesis',
 stream = 'kinesis-sink-demo',
 aws.region = 'us-east-1',
 aws.credentials.access_key_id = 'your_access_key',
 aws.credentials.secret_access_key = 'your_secret_key',
 type = 'debezium');
"""

# RisingWave, "Sink data to NATS" (risingwave-sink-to-nats.md).

RW_NATS_SYNTAX = """CREATE SINK [ IF NOT EXISTS ] sink_name
[FROM sink_from | AS select_query]
WITH (
   connector='nats',
   server_url='<your nats server>:<port>', [ <another_server_url_if_available>, ...]
   subject='<your subject>',

 -- optional parameters
   connect_mode=<connect_mode>
   username='<your user name>',
   password='<your password>'
   jwt=`<your jwt>`,
   nkey=`<your nkey>`
)
FORMAT PLAIN ENCODE JSON;
"""

# RisingWave, "Overview of data delivery" (risingwave-data-delivery.md) has no SQL
# statement; it names the connectors (kafka, jdbc, iceberg) and the upsert/append-only/
# debezium formats, which test_rw_* below and the malformed matrix exercise.

# Kinetica, "Data Sinks" (kinetica-data-sinks.md): the two SQL examples.

KIN_KAFKA_DATA_SINK = """  CREATE DATA SINK kin_dsink
  LOCATION = 'kafka://kafka.abc.com:9092'
  WITH OPTIONS
  (
      CREDENTIAL = 'kafka_credential',
      KAFKA_TOPIC_NAME = 'kafka_topic'
  )
  """

KIN_LOCAL_DATA_SINK = """  CREATE DATA SINK kin_dsink_local
  LOCATION = 'table://example.ds_employee_backup'
  """

SRC = "<source, table or mview>"

SEED_SINKS = ["avro_sink", "json_sink", "custom_topic_sink", "compatibility_level_sink", "docs_sink", "customer_orders", "s", "s1"]
SEED_CONNECTIONS = ["kafka_connection", "csr_connection", "csr_ssl", "csr_basic_http", "kin_dsink", "kin_dsink_local"]
SEED_SECRETS = ["kafka_ssl_key", "kafka_ssl_crt", "kafka_password", "csr_ssl_crt", "csr_ssl_key", "csr_password", "csr_username"]
SEED_CREDENTIALS = ["kafka_credential"]


# ----------------------------------------------------------------- helpers

def summary(rows):
    return [(r["command"], r["kind"], r["name"]) for r in rows]


def created(rows):
    return [r["details"].get("created") for r in rows]


def sink_row(conn, name):
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            "SELECT name, owner::text AS owner, source::text AS source, columns, row_filter, connector, connection, envelope, "
            "key_format, value_format, key_columns, key_not_enforced, snapshot, options, state FROM sink.sinks WHERE name = %s",
            (name,),
        )
        return cur.fetchone()


def connection_row(conn, name):
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute("SELECT name, connector, owner::text AS owner, options FROM sink.connections WHERE name = %s", (name,))
        return cur.fetchone()


def secret_value(conn, name):
    return one(conn, "SELECT value FROM sink.secrets WHERE name = %s", name)


def objects(conn):
    return set(conn.execute("SELECT kind, name FROM sink.objects").fetchall())


def created_by(conn, kind, name):
    return one(conn, "SELECT created_by FROM sink.objects WHERE kind = %s AND name = %s", kind, name)


def as_json(v):
    """Option values are text in the catalog; maps may be stored as JSON text."""
    if isinstance(v, str):
        try:
            parsed = json.loads(v)
        except ValueError:
            return v
        return parsed if isinstance(parsed, (dict, list)) else v
    return v


def opt(options, *names):
    """The first of `names` present in an option map (aliases, e.g. broker/brokers)."""
    for n in names:
        if n in options:
            return options[n]
    raise AssertionError(f"none of {names} in options {options}")


def show(conn, what):
    return run(conn, f"SHOW {what}")


def purge(conn):
    """Drop the seed-named objects and every d_ object (but the matrix's d_m_ ones)."""
    mine = "(name = ANY(%s) OR (name LIKE 'd\\_%%' AND name NOT LIKE 'd\\_m\\_%%') OR name LIKE 'example.d\\_%%')"
    for (name,) in conn.execute(f"SELECT name FROM sink.sinks WHERE {mine}", (SEED_SINKS,)).fetchall():
        conn.execute("SELECT sink.drop_sink(%s, if_exists => true)", (name,))
    for (name,) in conn.execute(f"SELECT name FROM sink.connections WHERE {mine}", (SEED_CONNECTIONS,)).fetchall():
        conn.execute("SELECT sink.drop_connection(%s, if_exists => true)", (name,))
    for (name,) in conn.execute(f"SELECT name FROM sink.secrets WHERE {mine}", (SEED_SECRETS,)).fetchall():
        conn.execute("SELECT sink.drop_secret(%s, if_exists => true)", (name,))
    for (name,) in conn.execute(f"SELECT name FROM sink.objects WHERE kind = 'credential' AND {mine}", (SEED_CREDENTIALS,)).fetchall():
        conn.execute("SELECT sink.drop_credential(%s, true)", (name,))


@pytest.fixture
def clean(db):
    """Purge before and after; tests append SQL (DROP TABLE ...) to run at the end."""
    purge(db)
    later = []
    yield later
    db.execute("RESET pg_sink.validate_connections")
    purge(db)
    for stmt in reversed(later):
        db.execute(stmt)


@pytest.fixture(scope="module")
def servers(server):
    with services(("kafka.sh", KENV), ("apicurio.sh", RENV)):
        yield


@pytest.fixture(scope="module")
def moto(server):
    with services(("moto.sh", MENV)):
        yield


@pytest.fixture
def mz(db, servers, clean):
    """The connections the Materialize sink examples use, to the local broker and
    registry (the seed's own connection examples point at Confluent Cloud)."""
    rows = run(db, f"""
        CREATE SECRET d_csr_password AS 'registry-pw';
        CREATE CONNECTION kafka_connection TO KAFKA (BROKER '{BROKERS}');
        CREATE CONNECTION csr_connection TO CONFLUENT SCHEMA REGISTRY (
            URL '{REGISTRY}',
            USERNAME = 'sink',
            PASSWORD = SECRET d_csr_password
        );
    """)
    assert summary(rows) == [("CREATE SECRET", "secret", "d_csr_password"), ("CREATE CONNECTION", "connection", "kafka_connection"),
                             ("CREATE CONNECTION", "connection", "csr_connection")]
    yield clean


def table(db, clean, ddl, name):
    db.execute(f"DROP TABLE IF EXISTS {name} CASCADE")
    db.execute(ddl)
    clean.append(f"DROP TABLE IF EXISTS {name} CASCADE")


def admin():
    return AdminClient({"bootstrap.servers": BROKERS})


def ensure_topic(name, partitions, config=None):
    a = admin()
    md = a.list_topics(timeout=10)
    if name not in md.topics:
        a.create_topics([NewTopic(name, partitions, 1, config=config or {})])[name].result(10)


def topic_config(name):
    a = admin()
    res = a.describe_configs([ConfigResource(ConfigResource.Type.TOPIC, name)])
    return {k: v.value for k, v in list(res.values())[0].result(10).items()}


def json_upsert_state(msgs, key_col):
    state = {}
    for _, k, v, _ in msgs:
        key = json.loads(k)[key_col]
        if v is None:
            state.pop(key, None)
        else:
            state[key] = json.loads(v)
    return state


def no_secret_in(rows, *values):
    text = json.dumps(rows, default=str)
    for v in values:
        assert v not in text, f"secret value {v!r} shown in {text}"


# ----------------------------------------------------------------- Materialize: connections

def test_mz_broker_ssl_connection_example(db, clean):
    # The seed's broker is a Confluent Cloud host with client certificates; no such
    # broker runs here, so reachability checks are off for this session.
    db.execute("SET pg_sink.validate_connections = off")
    sql = MZ_BROKER_SSL.replace("<BROKER_SSL_KEY>", "d-broker-ssl-key-5a1f").replace("<BROKER_SSL_CRT>", "d-broker-ssl-crt-77e0")
    rows = run(db, sql)
    assert summary(rows) == [("CREATE SECRET", "secret", "kafka_ssl_key"), ("CREATE SECRET", "secret", "kafka_ssl_crt"),
                             ("CREATE CONNECTION", "connection", "kafka_connection")]
    assert created(rows) == [True, True, True]
    assert rows[2]["connector"] == "kafka" and rows[2]["owner"] == "postgres"
    c = connection_row(db, "kafka_connection")
    assert c["connector"] == "kafka"
    o = c["options"]
    assert opt(o, "broker", "brokers") == f"{CONFLUENT_HOST}:9093"
    assert o["ssl_key"] == {"secret": "kafka_ssl_key"}
    assert o["ssl_certificate"] == {"secret": "kafka_ssl_crt"}
    no_secret_in(o, "d-broker-ssl-key-5a1f", "d-broker-ssl-crt-77e0")
    assert secret_value(db, "kafka_ssl_key") == "d-broker-ssl-key-5a1f"
    assert secret_value(db, "kafka_ssl_crt") == "d-broker-ssl-crt-77e0"
    assert {("secret", "kafka_ssl_key"), ("secret", "kafka_ssl_crt"), ("connection", "kafka_connection")} <= objects(db)
    assert created_by(db, "connection", "kafka_connection") == "materialize"
    shown = [r for r in show(db, "CONNECTIONS") if r["name"] == "kafka_connection"]
    assert len(shown) == 1 and shown[0]["kind"] == "connection"
    # The connector is a column of the row (the spec also allows it among the details).
    assert (shown[0]["details"].get("connector") or shown[0]["connector"]) == "kafka"
    assert shown[0]["details"]["dialect"] == "materialize"
    assert shown[0]["details"]["options"]["ssl_key"] == {"secret": "kafka_ssl_key"}
    secrets = show(db, "SECRETS")
    assert {"kafka_ssl_key", "kafka_ssl_crt"} <= {r["name"] for r in secrets}
    no_secret_in(show(db, "CONNECTIONS") + secrets, "d-broker-ssl-key-5a1f", "d-broker-ssl-crt-77e0")
    # The secrets are in use: dropping one is refused, naming its user.
    st, msg, detail, hint = fails(db, "DROP SECRET kafka_ssl_key")
    assert st == "2BP01" and "kafka_connection" in (detail or "") + (hint or "") + msg
    rows = run(db, "DROP CONNECTION kafka_connection; DROP SECRET kafka_ssl_key; DROP SECRET kafka_ssl_crt")
    assert [r["details"].get("dropped") for r in rows] == [True, True, True]
    assert not {("connection", "kafka_connection"), ("secret", "kafka_ssl_key")} & objects(db)


def test_mz_broker_sasl_connection_example(db, clean):
    # A SASL/SCRAM broker on Confluent Cloud cannot be reached from here: no validation.
    db.execute("SET pg_sink.validate_connections = off")
    rows = run(db, MZ_BROKER_SASL.replace("<BROKER_PASSWORD>", "d-broker-password-c0ffee"))
    assert summary(rows) == [("CREATE SECRET", "secret", "kafka_password"), ("CREATE CONNECTION", "connection", "kafka_connection")]
    o = connection_row(db, "kafka_connection")["options"]
    assert opt(o, "broker", "brokers") == f"{CONFLUENT_HOST}:9092"
    assert o["sasl_mechanisms"] == "SCRAM-SHA-256"
    assert o["sasl_username"] == "foo"
    assert o["sasl_password"] == {"secret": "kafka_password"}
    no_secret_in(o, "d-broker-password-c0ffee")
    assert secret_value(db, "kafka_password") == "d-broker-password-c0ffee"
    # ALTER SECRET changes the value, still never shown.
    rows = run(db, "ALTER SECRET kafka_password AS 'd-rotated-password-beef'")
    assert rows[0]["command"] == "ALTER SECRET" and rows[0]["details"].get("altered") is True
    assert secret_value(db, "kafka_password") == "d-rotated-password-beef"
    no_secret_in(show(db, "SECRETS") + show(db, "CONNECTIONS"), "d-broker-password-c0ffee", "d-rotated-password-beef")


def test_mz_csr_ssl_connection_example(db, clean):
    # A registry with client certificates on Confluent Cloud: not reachable here.
    db.execute("SET pg_sink.validate_connections = off")
    sql = (MZ_CSR_SSL.replace("<CSR_SSL_CRT>", "d-csr-ssl-crt-1111").replace("<CSR_SSL_KEY>", "d-csr-ssl-key-2222")
           .replace("<CSR_PASSWORD>", "d-csr-password-3333"))
    rows = run(db, sql)
    assert summary(rows) == [("CREATE SECRET", "secret", "csr_ssl_crt"), ("CREATE SECRET", "secret", "csr_ssl_key"),
                             ("CREATE SECRET", "secret", "csr_password"), ("CREATE CONNECTION", "connection", "csr_ssl")]
    c = connection_row(db, "csr_ssl")
    assert c["connector"] == "confluent_schema_registry"
    o = c["options"]
    assert f"{CONFLUENT_HOST}:9093" in o["url"]
    assert o["ssl_key"] == {"secret": "csr_ssl_key"}
    assert o["ssl_certificate"] == {"secret": "csr_ssl_crt"}
    assert o["username"] == "foo"
    assert o["password"] == {"secret": "csr_password"}
    no_secret_in(o, "d-csr-ssl-crt-1111", "d-csr-ssl-key-2222", "d-csr-password-3333")
    assert secret_value(db, "csr_password") == "d-csr-password-3333"
    assert created_by(db, "connection", "csr_ssl") == "materialize"


def test_mz_csr_basic_http_connection_example_against_the_registry(db, servers, clean):
    # Validated for real against the registry stand-in (basic auth sink/registry-pw).
    sql = (MZ_CSR_BASIC_HTTP.replace("<CSR_USERNAME>", "sink").replace("<CSR_PASSWORD>", "registry-pw")
           .replace("<CONFLUENT_REGISTRY_URL>", REGISTRY))
    rows = run(db, sql)
    assert summary(rows) == [("CREATE SECRET", "secret", "csr_username"), ("CREATE SECRET", "secret", "csr_password"),
                             ("CREATE CONNECTION", "connection", "csr_basic_http")]
    assert created(rows) == [True, True, True]
    c = connection_row(db, "csr_basic_http")
    assert c["connector"] == "confluent_schema_registry"
    assert c["options"]["url"] == REGISTRY
    assert c["options"]["username"] == {"secret": "csr_username"}
    assert c["options"]["password"] == {"secret": "csr_password"}
    # IF NOT EXISTS: the second run of the secret statements creates nothing and keeps the values.
    again = run(db, sql.split("CREATE CONNECTION")[0])
    assert summary(again) == [("CREATE SECRET", "secret", "csr_username"), ("CREATE SECRET", "secret", "csr_password")]
    assert created(again) == [False, False]
    assert secret_value(db, "csr_password") == "registry-pw"
    # The registry really checks the credentials: a wrong password is refused at creation.
    run(db, "ALTER SECRET csr_password AS 'not-the-password'")
    st, msg, detail, hint = fails(db, f"CREATE CONNECTION d_csr_wrong FOR CONFLUENT SCHEMA REGISTRY URL '{REGISTRY}', "
                                      "USERNAME = SECRET csr_username, PASSWORD = SECRET csr_password")
    assert st == "22000" and "refused" in msg, (st, msg)
    assert connection_row(db, "d_csr_wrong") is None


# ----------------------------------------------------------------- Materialize: sinks

def test_mz_json_upsert_example_delivers_to_the_broker(db, mz):
    table(db, mz, "CREATE TABLE d_json_src (key_col int PRIMARY KEY, v text)", "d_json_src")
    db.execute("INSERT INTO d_json_src VALUES (1, 'one'), (2, 'two')")
    rows = run(db, MZ_UPSERT_JSON.replace(SRC, "d_json_src"))
    assert summary(rows) == [("CREATE SINK", "sink", "json_sink")]
    assert rows[0]["connector"] == "kafka" and rows[0]["owner"] == "postgres" and created(rows) == [True]
    s = sink_row(db, "json_sink")
    assert (s["connector"], s["connection"], s["envelope"], s["key_format"], s["value_format"]) == ("kafka", "kafka_connection", "upsert", "json", "json")
    assert s["key_columns"] == ["key_col"] and s["snapshot"] is True and s["source"] == "d_json_src"
    assert s["options"]["topic"] == "test_json_topic"
    assert created_by(db, "sink", "json_sink") == "materialize"
    wait_started(db, "json_sink")
    db.execute("INSERT INTO d_json_src VALUES (3, 'three')")
    db.execute("UPDATE d_json_src SET v = 'uno' WHERE key_col = 1")
    db.execute("DELETE FROM d_json_src WHERE key_col = 2")
    wait_caught_up(db, "json_sink", timeout=60)
    msgs = read_topic("test_json_topic")
    assert json_upsert_state(msgs, "key_col") == {1: {"key_col": 1, "v": "uno"}, 3: {"key_col": 3, "v": "three"}}
    assert [json.loads(k)["key_col"] for _, k, v, _ in msgs if v is None] == [2], "the delete is a tombstone"
    shown = [r for r in show(db, "SINKS") if r["name"] == "json_sink"]
    assert len(shown) == 1
    d = shown[0]["details"]
    assert (d["envelope"], d["format"], d["connection"], d["dialect"], d["state"]) == ("upsert", "json", "kafka_connection", "materialize", "running")
    assert "d_json_src" in d["source"]
    # IF NOT EXISTS skips an existing sink; DROP / DROP IF EXISTS report what they did.
    again = run(db, MZ_UPSERT_JSON.replace(SRC, "d_json_src").replace("CREATE SINK json_sink", "CREATE SINK IF NOT EXISTS json_sink"))
    assert summary(again) == [("CREATE SINK", "sink", "json_sink")] and created(again) == [False]
    st, msg, _, hint = fails(db, MZ_UPSERT_JSON.replace(SRC, "d_json_src"))
    assert st == "42710" and "json_sink" in msg
    slot, pub = db.execute("SELECT slot_name, publication_name FROM sink.sinks WHERE name = 'json_sink'").fetchone()
    rows = run(db, "DROP SINK json_sink")
    assert summary(rows) == [("DROP SINK", "sink", "json_sink")] and rows[0]["details"].get("dropped") is True
    assert run(db, "DROP SINK IF EXISTS json_sink")[0]["details"].get("dropped") is False
    assert sink_row(db, "json_sink") is None
    assert one(db, "SELECT count(*) FROM pg_replication_slots WHERE slot_name = %s", slot) == 0
    assert one(db, "SELECT count(*) FROM pg_publication WHERE pubname = %s", pub) == 0


def test_mz_avro_upsert_example_registers_and_delivers(db, mz):
    table(db, mz, "CREATE TABLE d_avro_src (key_col int PRIMARY KEY, v text NOT NULL)", "d_avro_src")
    db.execute("INSERT INTO d_avro_src VALUES (1, 'one'), (2, 'two')")
    rows = run(db, MZ_UPSERT_AVRO.replace(SRC, "d_avro_src"))
    assert summary(rows) == [("CREATE SINK", "sink", "avro_sink")]
    s = sink_row(db, "avro_sink")
    assert (s["connection"], s["envelope"], s["key_format"], s["value_format"], s["key_columns"]) == ("kafka_connection", "upsert", "avro", "avro", ["key_col"])
    assert s["options"]["topic"] == "test_avro_topic"
    assert "csr_connection" in json.dumps(s["options"])
    wait_started(db, "avro_sink")
    db.execute("UPDATE d_avro_src SET v = 'uno' WHERE key_col = 1")
    db.execute("DELETE FROM d_avro_src WHERE key_col = 2")
    wait_caught_up(db, "avro_sink", timeout=60)
    status, key = registry("GET", "/subjects/test_avro_topic-key/versions/latest")
    assert status == 200 and json.loads(key["schema"])["name"] == "row"
    status, value = registry("GET", "/subjects/test_avro_topic-value/versions/latest")
    assert status == 200 and json.loads(value["schema"])["name"] == "envelope"
    state = {}
    for _, k, v, _ in read_topic("test_avro_topic"):
        kid, kdoc = decode(k)
        assert kid == key["id"]
        if v is None:
            state.pop(kdoc["key_col"], None)
        else:
            vid, vdoc = decode(v)
            assert vid == value["id"]
            state[kdoc["key_col"]] = vdoc
    assert state == {1: {"key_col": 1, "v": "uno"}}


def test_mz_avro_debezium_example(db, mz):
    # Left empty: this example shares test_avro_topic with the upsert examples, whose
    # value schema a Debezium envelope would not be compatible with.
    table(db, mz, "CREATE TABLE d_avro_dbz_src (key_col int PRIMARY KEY, v text)", "d_avro_dbz_src")
    rows = run(db, MZ_DEBEZIUM_AVRO.replace(SRC, "d_avro_dbz_src"))
    assert summary(rows) == [("CREATE SINK", "sink", "avro_sink")]
    s = sink_row(db, "avro_sink")
    assert (s["connector"], s["connection"], s["envelope"], s["key_format"], s["value_format"]) == ("kafka", "kafka_connection", "debezium", "avro", "avro")
    assert s["key_columns"] == [] and s["options"]["topic"] == "test_avro_topic"
    assert "csr_connection" in json.dumps(s["options"])
    run(db, "DROP SINK avro_sink")


def test_mz_topic_configuration_example(db, mz):
    # The broker here is a single node, so replication factor 2 cannot be honoured:
    # the topic is created beforehand, and (as in Materialize) the TOPIC options only
    # apply to a topic the sink creates. test_mz_topic_options_are_applied_... checks
    # that they are applied when it does.
    ensure_topic("test_avro_topic", 4, {"cleanup.policy": "compact"})
    table(db, mz, "CREATE TABLE d_custom_src (key_col int PRIMARY KEY, v text)", "d_custom_src")
    notices = []
    db.add_notice_handler(lambda diag: notices.append(diag.message_primary or ""))
    rows = run(db, MZ_TOPIC_CONFIGURATION.replace(SRC, "d_custom_src"))
    assert summary(rows) == [("CREATE SINK", "sink", "custom_topic_sink")]
    assert any("cluster" in n.lower() for n in notices), f"IN CLUSTER is accepted with a NOTICE; got {notices}"
    s = sink_row(db, "custom_topic_sink")
    o = s["options"]
    assert o["topic"] == "test_avro_topic"
    assert str(o["topic_partition_count"]) == "4"
    assert str(o["topic_replication_factor"]) == "2"
    assert as_json(o["topic_config"]) == {"cleanup.policy": "compact"}
    assert (s["envelope"], s["key_format"], s["value_format"], s["key_columns"]) == ("upsert", "avro", "avro", ["key_col"])
    assert "my_io_cluster" not in json.dumps(o), "IN CLUSTER is ignored"


def test_mz_topic_options_are_applied_when_the_sink_creates_the_topic(db, mz):
    table(db, mz, "CREATE TABLE d_topic_src (id int PRIMARY KEY, v text)", "d_topic_src")
    rows = run(db, """CREATE SINK d_topic_opts
  FROM d_topic_src
  INTO KAFKA CONNECTION kafka_connection (
    TOPIC 'd-topic-opts',
    TOPIC PARTITION COUNT 4,
    TOPIC REPLICATION FACTOR 1,
    TOPIC CONFIG MAP['cleanup.policy' => 'compact', 'retention.ms' => '3600000'],
    COMPRESSION TYPE = 'gzip'
  )
  KEY (id)
  FORMAT JSON
  ENVELOPE UPSERT""")
    assert summary(rows) == [("CREATE SINK", "sink", "d_topic_opts")]
    topics = admin().list_topics("d-topic-opts", timeout=10).topics
    assert len(topics["d-topic-opts"].partitions) == 4
    cfg = topic_config("d-topic-opts")
    assert cfg["cleanup.policy"] == "compact" and cfg["retention.ms"] == "3600000"
    assert sink_row(db, "d_topic_opts")["options"]["compression_type"] == "gzip"
    db.execute("INSERT INTO d_topic_src VALUES (1, 'a')")
    wait_caught_up(db, "d_topic_opts", timeout=60)
    assert [json.loads(k) for _, k, _, _ in read_topic("d-topic-opts")] == [{"id": 1}]


def test_mz_compatibility_level_example_sets_the_subject_levels(db, mz):
    table(db, mz, "CREATE TABLE d_compat_src (key_col int PRIMARY KEY, v text NOT NULL)", "d_compat_src")
    notices = []
    db.add_notice_handler(lambda diag: notices.append(diag.message_primary or ""))
    rows = run(db, MZ_COMPATIBILITY_LEVELS.replace(SRC, "d_compat_src"))  # note the trailing comma after TOPIC
    assert summary(rows) == [("CREATE SINK", "sink", "compatibility_level_sink")]
    assert any("cluster" in n.lower() for n in notices)
    o = sink_row(db, "compatibility_level_sink")["options"]
    assert o["key_compatibility_level"] == "BACKWARD"
    assert o["value_compatibility_level"] == "BACKWARD_TRANSITIVE"
    db.execute("INSERT INTO d_compat_src VALUES (7, 'seven')")
    wait_caught_up(db, "compatibility_level_sink", timeout=60)
    assert registry("GET", "/config/test_avro_topic-key")[1] == {"compatibilityLevel": "BACKWARD"}
    assert registry("GET", "/config/test_avro_topic-value")[1] == {"compatibilityLevel": "BACKWARD_TRANSITIVE"}


def test_mz_documentation_comments_example_publishes_the_seed_schemas(db, mz):
    table_part, sink_part = MZ_DOCUMENTATION_COMMENTS.split("CREATE SINK docs_sink")
    sink_part = "CREATE SINK docs_sink" + sink_part
    db.execute("DROP TABLE IF EXISTS t CASCADE")
    mz.append("DROP TABLE IF EXISTS t CASCADE")
    # CREATE TABLE and COMMENT ON are ordinary Postgres statements: run as such.
    for stmt in table_part.split(";"):
        if stmt.strip():
            db.execute(stmt)
    # Materialize proves `key` unique by itself; Postgres needs a primary key for the
    # upsert key check and for deletes to carry the key (key is NOT NULL already).
    db.execute("ALTER TABLE t ADD PRIMARY KEY (key)")
    db.execute("INSERT INTO t VALUES (1, 'one'), (2, 'two')")
    rows = run(db, sink_part)
    assert summary(rows) == [("CREATE SINK", "sink", "docs_sink")]
    s = sink_row(db, "docs_sink")
    assert (s["source"], s["key_columns"], s["envelope"], s["value_format"]) == ("t", ["key"], "upsert", "avro")
    wait_started(db, "docs_sink")
    db.execute("INSERT INTO t VALUES (3, 'three')")
    db.execute("UPDATE t SET value = 'uno' WHERE key = 1")
    db.execute("DELETE FROM t WHERE key = 2")
    wait_caught_up(db, "docs_sink", timeout=60)
    status, key = registry("GET", "/subjects/doc-commont-example-key/versions/latest")
    assert status == 200
    assert json.loads(key["schema"]) == json.loads(MZ_DOCS_KEY_SCHEMA)
    status, value = registry("GET", "/subjects/doc-commont-example-value/versions/latest")
    assert status == 200
    assert json.loads(value["schema"]) == json.loads(MZ_DOCS_VALUE_SCHEMA)
    state = {}
    for _, k, v, _ in read_topic("doc-commont-example"):
        kid, kdoc = decode(k)
        assert kid == key["id"]
        if v is None:
            state.pop(kdoc["key"], None)
        else:
            vid, vdoc = decode(v)
            assert vid == value["id"]
            state[kdoc["key"]] = vdoc["value"]
    assert state == dict(db.execute("SELECT key, value FROM t").fetchall()) == {1: "uno", 3: "three"}


def test_mz_upsert_key_selection_examples(db, mz):
    # `CREATE MATERIALIZED VIEW deduped ...` is Materialize SQL, not pg_sink's: a
    # table `deduped (k int primary key, v text)` stands in for the view, and only the
    # CREATE SINK that follows it in the seed is run.
    assert "CREATE MATERIALIZED VIEW deduped" in MZ_DEDUPED
    deduped_sink = MZ_DEDUPED[MZ_DEDUPED.index("  -- Materialize can now prove"):]
    table(db, mz, "CREATE TABLE deduped (k int PRIMARY KEY, v text)", "deduped")
    # original_input has no unique key on k; REPLICA IDENTITY FULL lets deletes carry k.
    table(db, mz, "CREATE TABLE original_input (k int, v text)", "original_input")
    db.execute("ALTER TABLE original_input REPLICA IDENTITY FULL")
    rows = run(db, deduped_sink)
    assert summary(rows) == [("CREATE SINK", "sink", "s")]
    s = sink_row(db, "s")
    assert (s["source"], s["key_columns"], s["key_not_enforced"], s["envelope"]) == ("deduped", ["k"], False, "upsert")
    assert s["options"]["topic"] == "t"
    db.execute("INSERT INTO deduped VALUES (1, 'a')")
    wait_caught_up(db, "s", timeout=60)
    assert [json.loads(k) for _, k, _, _ in read_topic("t")] == [{"k": 1}]
    run(db, "DROP SINK s")
    # Without NOT ENFORCED the seed's troubleshooting error comes back.
    st, msg, detail, hint = fails(db, MZ_NOT_ENFORCED.replace("KEY (k) NOT ENFORCED", "KEY (k)"))
    assert st == "22023" and msg == "upsert key could not be validated as unique", (st, msg)
    assert "no known valid unique keys" in detail and "NOT ENFORCED" in hint
    assert sink_row(db, "s") is None
    rows = run(db, MZ_NOT_ENFORCED)
    assert summary(rows) == [("CREATE SINK", "sink", "s")]
    s = sink_row(db, "s")
    assert (s["source"], s["key_columns"], s["key_not_enforced"]) == ("original_input", ["k"], True)
    db.execute("INSERT INTO original_input VALUES (5, 'x')")
    wait_caught_up(db, "s", timeout=60)
    assert {"k": 5} in [json.loads(k) for _, k, _, _ in read_topic("t")]
    run(db, "DROP SINK s")


def test_mz_custom_partitioning_example(db, mz):
    table(db, mz, "CREATE TABLE d_orders (customer_id int, order_id int, amount numeric(10,2), PRIMARY KEY (customer_id, order_id))", "d_orders")
    # Four partitions so that the hash has somewhere to send messages (the broker's
    # default is one partition).
    ensure_topic("customer-orders", 4)
    rows = run(db, MZ_CUSTOM_PARTITIONING.replace("FROM ...", "FROM d_orders"))
    assert summary(rows) == [("CREATE SINK", "sink", "customer_orders")]
    s = sink_row(db, "customer_orders")
    assert s["key_columns"] == ["customer_id", "order_id"] and s["envelope"] == "upsert"
    assert "seahash(customer_id::text)" in s["options"]["partition_by"]
    assert "--" not in s["options"]["partition_by"], "comments are not part of the expression"
    db.execute("INSERT INTO d_orders SELECT c, o, c * 10 + o FROM generate_series(1, 6) c, generate_series(1, 3) o")
    wait_caught_up(db, "customer_orders", timeout=60)
    msgs = read_topic("customer-orders")
    assert len(msgs) == 18
    by_customer = {}
    for part, k, _, _ in msgs:
        cid = json.loads(k)["customer_id"]
        assert part == one(db, "SELECT (sink.seahash(%s::text) %% 4)::int", str(cid)), (cid, part)
        by_customer.setdefault(cid, set()).add(part)
    assert all(len(p) == 1 for p in by_customer.values())


def test_mz_partition_by_syntax_examples(db, mz):
    general, example = MZ_PARTITION_BY_SYNTAX.split("-- Example.")
    general = general.replace("-- General syntax.", "")
    table(db, mz, "CREATE TABLE d_people (name text PRIMARY KEY, address text)", "d_people")
    ensure_topic("d-murmur", 3)
    ensure_topic("d-crc", 3)
    fill = lambda sql, sink: (sql.replace("CREATE SINK ...", f"CREATE SINK {sink} FROM d_people").replace("<name>", "kafka_connection")
                              .replace(") ...;", ") KEY (name) FORMAT JSON ENVELOPE UPSERT;"))
    # The snippets leave out TOPIC, which the grammar requires first in the parentheses.
    st, msg, detail, hint = fails(db, fill(example, "d_murmur"))
    assert st in ("42601", "22023") and "topic" in (msg + (detail or "") + (hint or "")).lower(), (st, msg, detail)
    assert sink_row(db, "d_murmur") is None
    # With TOPIC added (the only change beyond the placeholders), both run.
    rows = run(db, fill(example, "d_murmur").replace("(\n    PARTITION BY", "(\n    TOPIC 'd-murmur',\n    PARTITION BY"))
    assert summary(rows) == [("CREATE SINK", "sink", "d_murmur")]
    assert "kafka_murmur2(name || address)" in sink_row(db, "d_murmur")["options"]["partition_by"]
    rows = run(db, fill(general, "d_crc").replace("<expression>", "crc32(name)").replace("(PARTITION BY", "(TOPIC 'd-crc', PARTITION BY"))
    assert summary(rows) == [("CREATE SINK", "sink", "d_crc")]
    db.execute("INSERT INTO d_people SELECT 'n' || g, 'street ' || g FROM generate_series(1, 12) g")
    wait_caught_up(db, "d_murmur", timeout=60)
    wait_caught_up(db, "d_crc", timeout=60)
    for part, k, v, _ in read_topic("d-murmur"):
        row = json.loads(v)
        assert part == one(db, "SELECT (sink.kafka_murmur2(%s::text) %% 3)::int", row["name"] + row["address"])
    for part, k, _, _ in read_topic("d-crc"):
        assert part == one(db, "SELECT (sink.crc32(%s::text) %% 3)::int", json.loads(k)["name"])


def test_mz_other_clauses_key_value_formats_snapshot_and_schema_qualified_source(db, mz):
    table(db, mz, "CREATE TABLE public.d_words (w text PRIMARY KEY, n int)", "public.d_words")
    db.execute("INSERT INTO d_words VALUES ('before', 1)")
    rows = run(db, """create sink if not exists d_words_sink
  from public.d_words
  into kafka connection kafka_connection (topic 'd-words', compression type 'lz4',)
  key (w) not enforced
  key format text value format json
  envelope upsert
  with (snapshot = false)""")
    assert summary(rows) == [("CREATE SINK", "sink", "d_words_sink")] and created(rows) == [True]
    s = sink_row(db, "d_words_sink")
    assert (s["key_format"], s["value_format"], s["snapshot"], s["key_not_enforced"]) == ("text", "json", False, True)
    assert s["options"]["compression_type"] == "lz4" and s["options"]["topic"] == "d-words"
    wait_started(db, "d_words_sink")
    db.execute("INSERT INTO d_words VALUES ('after', 2)")
    wait_caught_up(db, "d_words_sink", timeout=60)
    msgs = read_topic("d-words")
    assert [(k, json.loads(v)) for _, k, v, _ in msgs] == [(b"after", {"w": "after", "n": 2})], "no snapshot, TEXT key"


# ----------------------------------------------------------------- RisingWave

def test_rw_kinesis_example_delivers_to_moto(db, moto, clean):
    make_stream("kinesis-sink-demo", shards=1)
    db.execute("DROP TABLE IF EXISTS t CASCADE")
    db.execute("CREATE TABLE t (key int PRIMARY KEY, value text)")
    clean.append("DROP TABLE IF EXISTS t CASCADE")
    db.execute("INSERT INTO t VALUES (1, 'one')")
    # Host adjustment: the example has no endpoint (real AWS); moto answers here.
    sql = (RW_KINESIS_EXAMPLE.replace(" aws.region = 'us-east-1',", f" aws.region = 'us-east-1',\n endpoint = '{KINESIS_ENDPOINT}',")
           .replace("your_access_key", "AKIDPGSINK").replace("your_secret_key", "pgsink-secret"))
    rows = run(db, sql)
    assert summary(rows) == [("CREATE SINK", "sink", "s1")] and rows[0]["connector"] == "kinesis"
    s = sink_row(db, "s1")
    assert (s["connector"], s["envelope"], s["source"], s["connection"]) == ("kinesis", "debezium", "t", None)
    o = s["options"]
    assert (o["stream"], o["aws.region"], o["endpoint"]) == ("kinesis-sink-demo", "us-east-1", KINESIS_ENDPOINT)
    assert created_by(db, "sink", "s1") == "risingwave"
    wait_started(db, "s1")
    db.execute("INSERT INTO t VALUES (2, 'two')")
    db.execute("UPDATE t SET value = 'uno' WHERE key = 1")
    wait_caught_up(db, "s1", timeout=60)
    values = [json.loads(data)["value"] for recs in read_stream("kinesis-sink-demo").values() for _, data in recs]
    assert [v["op"] for v in values] == ["r", "c", "u"]
    assert values[1]["after"] == {"key": 2, "value": "two"}
    assert values[2]["after"] == {"key": 1, "value": "uno"}
    d = [r for r in show(db, "SINKS") if r["name"] == "s1"][0]["details"]
    assert d["dialect"] == "risingwave" and d["envelope"] == "debezium"
    rows = run(db, "DROP SINK s1")
    assert rows[0]["details"].get("dropped") is True


def test_rw_kinesis_syntax_block_filled_in(db, moto, clean):
    make_stream("d-kinesis-syntax", shards=1)
    table(db, clean, "CREATE TABLE d_kin_src (id int PRIMARY KEY, v text, secret_col text)", "d_kin_src")
    sql = (RW_KINESIS_SYNTAX.replace("[ IF NOT EXISTS ] sink_name", "IF NOT EXISTS d_kinesis_syntax")
           .replace("[FROM sink_from | AS select_query]", "AS SELECT id, v FROM d_kin_src")
           .replace("connector_parameter = 'value', ...",
                    f"stream = 'd-kinesis-syntax', aws.region = 'us-east-1', endpoint = '{KINESIS_ENDPOINT}',\n"
                    "   aws.credentials.access_key_id = 'AKIDPGSINK', aws.credentials.secret_access_key = 'pgsink-secret',\n"
                    "   type = 'upsert'"))
    rows = run(db, sql)
    assert summary(rows) == [("CREATE SINK", "sink", "d_kinesis_syntax")] and created(rows) == [True]
    assert created(run(db, sql)) == [False], "IF NOT EXISTS"
    s = sink_row(db, "d_kinesis_syntax")
    assert s["columns"] == ["id", "v"] and s["envelope"] == "upsert" and s["key_columns"] == ["id"]
    wait_started(db, "d_kinesis_syntax")
    db.execute("INSERT INTO d_kin_src VALUES (1, 'a', 'hidden')")
    wait_caught_up(db, "d_kinesis_syntax", timeout=60)
    docs = [json.loads(data) for recs in read_stream("d-kinesis-syntax").values() for _, data in recs]
    assert [(d["key"], d["value"]) for d in docs] == [({"id": 1}, {"id": 1, "v": "a"})]


def test_rw_nats_syntax_block_in_plain_mode_delivers(db, clean, nats_servers):
    table(db, clean, "CREATE TABLE d_nats_src (id int PRIMARY KEY, v text)", "d_nats_src")
    db.execute("INSERT INTO d_nats_src VALUES (1, 'a'), (2, 'b')")
    sql = (RW_NATS_SYNTAX.replace("[ IF NOT EXISTS ] sink_name", "IF NOT EXISTS d_nats_sink")
           .replace("[FROM sink_from | AS select_query]", "FROM d_nats_src")
           .replace("'<your nats server>:<port>', [ <another_server_url_if_available>, ...]", f"'{NATS_SERVER}',")
           .replace("<your subject>", "d.nats.items")
           # plain mode: the user/password/jwt/nkey lines of the block do not apply.
           .replace("connect_mode=<connect_mode>\n   username='<your user name>',\n   password='<your password>'\n"
                    "   jwt=`<your jwt>`,\n   nkey=`<your nkey>`\n", "connect_mode='plain'\n"))
    assert "connect_mode='plain'" in sql and "<" not in sql
    received = []
    loop = asyncio.new_event_loop()

    async def listen():
        nc = await nats.connect(f"nats://{NATS_SERVER}")

        async def cb(msg):
            received.append((msg.subject, json.loads(msg.data)))

        await nc.subscribe("d.nats.items", cb=cb)
        await nc.flush()
        return nc

    nc = loop.run_until_complete(listen())
    try:
        rows = run(db, sql)
        assert summary(rows) == [("CREATE SINK", "sink", "d_nats_sink")] and rows[0]["connector"] == "nats"
        s = sink_row(db, "d_nats_sink")
        assert s["envelope"] == "append-only" and s["value_format"] == "json"
        assert (s["options"]["server_url"], s["options"]["subject"], s["options"]["connect_mode"]) == (NATS_SERVER, "d.nats.items", "plain")
        wait_started(db, "d_nats_sink")
        db.execute("INSERT INTO d_nats_src VALUES (3, 'c'), (4, 'd')")
        wait_caught_up(db, "d_nats_sink", timeout=60)
        deadline = time.time() + 10
        while len(received) < 4 and time.time() < deadline:
            loop.run_until_complete(asyncio.sleep(0.1))
    finally:
        loop.run_until_complete(nc.close())
    assert sorted(m["id"] for _, m in received) == [1, 2, 3, 4]
    assert {s for s, _ in received} == {"d.nats.items"}
    assert {"id": 3, "v": "c"} in [m for _, m in received]
    assert created(run(db, sql)) == [False]


def test_rw_nats_syntax_block_with_its_optional_parameters(db, clean):
    # Filled in with every optional parameter (credential mode, backtick strings).
    # The server on NATS_PORT does not take JWTs (test_nats covers that mode with
    # scripts/nats.sh), so reachability checks are off for this session. The block
    # misses two commas; they are added here (without them it is a syntax error, see
    # the malformed matrix).
    db.execute("SET pg_sink.validate_connections = off")
    table(db, clean, "CREATE TABLE d_nats_opt_src (id int PRIMARY KEY, v text)", "d_nats_opt_src")
    sql = (RW_NATS_SYNTAX.replace("[ IF NOT EXISTS ] sink_name", "d_nats_opt")
           .replace("[FROM sink_from | AS select_query]", "FROM d_nats_opt_src")
           .replace("'<your nats server>:<port>', [ <another_server_url_if_available>, ...]", f"'{NATS_SERVER},127.0.0.1:14299',")
           .replace("<your subject>", "d.nats.opt")
           .replace("connect_mode=<connect_mode>\n", "connect_mode='credential',\n")
           .replace("<your user name>", "d_user").replace("<your password>'\n", "d-nats-password',\n")
           .replace("<your jwt>", "eyJ0eXAiOiJKV1QiLCJhbGciOiJlZDI1NTE5LW5rZXkifQ.e30.sig")
           .replace("<your nkey>", "SUAD3NKEYSEEDFORTESTSONLY"))
    rows = run(db, sql)
    assert summary(rows) == [("CREATE SINK", "sink", "d_nats_opt")]
    o = sink_row(db, "d_nats_opt")["options"]
    assert o["connect_mode"] == "credential" and o["server_url"] == f"{NATS_SERVER},127.0.0.1:14299"
    # Credentials given inline are kept as secrets, the catalog holds references.
    def inline(option):
        ref = json.loads(o[option])
        assert ref == {"secret": f"sink:d_nats_opt:{option}"}, o[option]
        return one(db, "SELECT value FROM sink.secrets WHERE name = %s", ref["secret"])
    assert inline("jwt") == "eyJ0eXAiOiJKV1QiLCJhbGciOiJlZDI1NTE5LW5rZXkifQ.e30.sig", "backticks are strings"
    assert inline("nkey") == "SUAD3NKEYSEEDFORTESTSONLY" and o["username"] == "d_user"
    assert inline("password") == "d-nats-password"


def test_rw_kafka_connector_connection_and_formats(db, servers, clean):
    table(db, clean, "CREATE TABLE d_rw_src (id int PRIMARY KEY, v text)", "d_rw_src")
    db.execute("INSERT INTO d_rw_src VALUES (1, 'one'), (2, 'two')")
    rows = run(db, f"CREATE CONNECTION d_rw_kafka_conn WITH (type = 'kafka', properties.bootstrap.server = '{BROKERS}')")
    assert summary(rows) == [("CREATE CONNECTION", "connection", "d_rw_kafka_conn")] and rows[0]["connector"] == "kafka"
    assert created_by(db, "connection", "d_rw_kafka_conn") == "risingwave"
    rows = run(db, """CREATE SINK d_rw_upsert FROM d_rw_src WITH (
   connector = 'kafka',
   connection = 'd_rw_kafka_conn',
   topic = 'd-rw-upsert',
   primary_key = 'id'
) FORMAT UPSERT ENCODE JSON;""")
    assert summary(rows) == [("CREATE SINK", "sink", "d_rw_upsert")]
    s = sink_row(db, "d_rw_upsert")
    assert (s["connection"], s["envelope"], s["key_columns"], s["value_format"]) == ("d_rw_kafka_conn", "upsert", ["id"], "json")
    rows = run(db, f"""CREATE SINK d_rw_plain FROM d_rw_src WITH (
   connector = 'kafka', properties.bootstrap.server = '{BROKERS}', topic = 'd-rw-plain'
) FORMAT PLAIN ENCODE JSON (force_append_only = 'true');
CREATE SINK d_rw_dbz FROM d_rw_src WITH (
   connector = 'kafka', properties.bootstrap.server = '{BROKERS}', topic = 'd-rw-dbz'
) FORMAT DEBEZIUM ENCODE JSON""")
    assert summary(rows) == [("CREATE SINK", "sink", "d_rw_plain"), ("CREATE SINK", "sink", "d_rw_dbz")]
    assert sink_row(db, "d_rw_plain")["envelope"] == "append-only"
    assert str(sink_row(db, "d_rw_plain")["options"]["force_append_only"]).lower() == "true"
    assert sink_row(db, "d_rw_dbz")["envelope"] == "debezium"
    wait_started(db, "d_rw_upsert")
    wait_started(db, "d_rw_dbz")
    db.execute("UPDATE d_rw_src SET v = 'uno' WHERE id = 1")
    db.execute("DELETE FROM d_rw_src WHERE id = 2")
    wait_caught_up(db, "d_rw_upsert", timeout=60)
    assert json_upsert_state(read_topic("d-rw-upsert"), "id") == {1: {"id": 1, "v": "uno"}}
    wait_caught_up(db, "d_rw_dbz", timeout=60)
    ops = [json.loads(v)["op"] for _, _, v, _ in read_topic("d-rw-dbz") if v is not None]
    assert ops == ["r", "r", "u", "d"]
    rows = run(db, "DROP SINK d_rw_upsert; DROP SINK d_rw_plain CASCADE; DROP SINK IF EXISTS d_rw_dbz")
    assert [r["details"].get("dropped") for r in rows] == [True, True, True]


def test_rw_secret_and_older_type_option(db, clean):
    d = out_dir("d_rw_files")
    rows = run(db, "CREATE SECRET d_rw_secret WITH ( backend = 'meta' ) AS 'd-rw-secret-value'")
    assert summary(rows) == [("CREATE SECRET", "secret", "d_rw_secret")]
    assert secret_value(db, "d_rw_secret") == "d-rw-secret-value"
    assert created_by(db, "secret", "d_rw_secret") == "risingwave"
    no_secret_in(show(db, "SECRETS"), "d-rw-secret-value")
    table(db, clean, "CREATE TABLE d_rw_file_src (id int PRIMARY KEY, v text)", "d_rw_file_src")
    rows = run(db, f"CREATE SINK d_rw_file FROM d_rw_file_src WITH (connector = 'file', path = '{d}', type = 'upsert')")
    assert summary(rows) == [("CREATE SINK", "sink", "d_rw_file")] and rows[0]["connector"] == "file"
    assert sink_row(db, "d_rw_file")["envelope"] == "upsert"
    db.execute("INSERT INTO d_rw_file_src VALUES (1, 'x')")
    wait_caught_up(db, "d_rw_file", timeout=60)
    assert [(r["key"], r["value"]) for r in file_records(d, "d_rw_file")] == [({"id": 1}, {"id": 1, "v": "x"})]


# ----------------------------------------------------------------- Kinetica

def test_kin_kafka_example_with_a_credential(db, servers, clean):
    rows = run(db, "CREATE CREDENTIAL kafka_credential TYPE = 'kafka', IDENTITY = 'kin_user', SECRET = 'kin-credential-secret-42'"
                   " WITH OPTIONS (security.protocol = 'PLAINTEXT')")
    assert summary(rows) == [("CREATE CREDENTIAL", "credential", "kafka_credential")]
    assert ("credential", "kafka_credential") in objects(db)
    assert created_by(db, "credential", "kafka_credential") == "kinetica"
    shown = show(db, "CREDENTIAL kafka_credential")
    assert len(shown) == 1 and shown[0]["details"]["type"] == "kafka" and shown[0]["details"]["identity"] == "kin_user"
    no_secret_in(shown + show(db, "CREDENTIAL *"), "kin-credential-secret-42")
    # 1. Verbatim, host included: kafka.abc.com does not exist, so no validation here.
    db.execute("SET pg_sink.validate_connections = off")
    rows = run(db, KIN_KAFKA_DATA_SINK)
    assert summary(rows) == [("CREATE DATA SINK", "connection", "kin_dsink")] and rows[0]["connector"] == "kafka"
    c = connection_row(db, "kin_dsink")
    assert c["connector"] == "kafka"
    assert "kafka.abc.com:9092" in json.dumps(c["options"])
    assert opt(c["options"], "kafka_topic_name", "topic") == "kafka_topic"
    assert "kafka_credential" in json.dumps(c["options"])
    no_secret_in(c["options"], "kin-credential-secret-42")
    assert run(db, "DROP DATA SINK kin_dsink")[0]["details"].get("dropped") is True
    # 2. Against the local broker (host adjusted), validated for real.
    db.execute("RESET pg_sink.validate_connections")
    rows = run(db, KIN_KAFKA_DATA_SINK.replace("kafka.abc.com:9092", BROKERS))
    assert summary(rows) == [("CREATE DATA SINK", "connection", "kin_dsink")]
    table(db, clean, "CREATE TABLE d_kin_orders (id int PRIMARY KEY, item text)", "d_kin_orders")
    db.execute("INSERT INTO d_kin_orders VALUES (1, 'apple')")
    rows = run(db, "CREATE STREAM d_kin_kafka_stream ON TABLE d_kin_orders WITH OPTIONS (DATASINK_NAME = 'kin_dsink')")
    assert summary(rows) == [("CREATE STREAM", "sink", "d_kin_kafka_stream")] and rows[0]["connector"] == "kafka"
    s = sink_row(db, "d_kin_kafka_stream")
    assert (s["connection"], s["connector"], s["envelope"], s["source"]) == ("kin_dsink", "kafka", "debezium", "d_kin_orders")
    wait_started(db, "d_kin_kafka_stream")
    db.execute("INSERT INTO d_kin_orders VALUES (2, 'pear')")
    db.execute("UPDATE d_kin_orders SET item = 'plum' WHERE id = 1")
    wait_caught_up(db, "d_kin_kafka_stream", timeout=60)
    events = [json.loads(v) for _, _, v, _ in read_topic("kafka_topic")]
    assert [(e["op"], e["after"]) for e in events] == [("r", {"id": 1, "item": "apple"}), ("c", {"id": 2, "item": "pear"}),
                                                       ("u", {"id": 1, "item": "plum"})]
    shown = show(db, "DATA SINK kin_dsink")
    assert len(shown) == 1 and shown[0]["kind"] == "connection" and shown[0]["connector"] == "kafka"
    assert "kin_dsink" in {r["name"] for r in show(db, "DATA SINK *")}
    assert "kin_dsink" in {r["name"] for r in show(db, "DATA SINKS")}
    no_secret_in(show(db, "DATA SINK *"), "kin-credential-secret-42")
    # The data sink is in use; it can be altered but not dropped.
    st, msg, detail, _ = fails(db, "DROP DATA SINK kin_dsink")
    assert st == "2BP01" and "d_kin_kafka_stream" in (detail or "") + msg
    rows = run(db, "ALTER DATA SINK kin_dsink SET PROPERTY KAFKA_TOPIC_NAME = 'kafka_topic_2'")
    assert rows[0]["details"].get("altered") is True
    assert opt(connection_row(db, "kin_dsink")["options"], "kafka_topic_name", "topic") == "kafka_topic_2"
    rows = run(db, "ALTER CREDENTIAL kafka_credential SET PROPERTY IDENTITY = 'kin_user2', SECRET = 'kin-credential-secret-43'")
    assert rows[0]["details"].get("altered") is True
    shown = show(db, "CREDENTIAL kafka_credential")
    assert shown[0]["details"]["identity"] == "kin_user2"
    no_secret_in(shown, "kin-credential-secret-42", "kin-credential-secret-43")
    rows = run(db, "DROP STREAM d_kin_kafka_stream; DROP DATA SINK kin_dsink; DROP CREDENTIAL kafka_credential; DROP CREDENTIAL IF EXISTS kafka_credential")
    assert [r["details"].get("dropped") for r in rows] == [True, True, True, False]
    assert not {("sink", "d_kin_kafka_stream"), ("connection", "kin_dsink"), ("credential", "kafka_credential")} & objects(db)


def test_kin_local_table_example_delivers_into_the_table(db, clean):
    db.execute("DROP SCHEMA IF EXISTS example CASCADE")
    db.execute("CREATE SCHEMA example")
    clean.append("DROP SCHEMA IF EXISTS example CASCADE")
    table(db, clean, "CREATE TABLE d_kin_employee (id int PRIMARY KEY, name text, dept text)", "d_kin_employee")
    db.execute("INSERT INTO d_kin_employee VALUES (1, 'ann', 'eng'), (2, 'bob', 'ops')")
    rows = run(db, KIN_LOCAL_DATA_SINK)
    assert summary(rows) == [("CREATE DATA SINK", "connection", "kin_dsink_local")] and rows[0]["connector"] == "table"
    c = connection_row(db, "kin_dsink_local")
    assert c["connector"] == "table" and "example.ds_employee_backup" in json.dumps(c["options"])
    rows = run(db, "CREATE STREAM d_kin_emp_stream ON TABLE d_kin_employee WITH OPTIONS (DATASINK_NAME = 'kin_dsink_local', TYPE = 'upsert')")
    assert summary(rows) == [("CREATE STREAM", "sink", "d_kin_emp_stream")]
    s = sink_row(db, "d_kin_emp_stream")
    assert (s["connection"], s["connector"], s["envelope"]) == ("kin_dsink_local", "table", "upsert")
    wait_started(db, "d_kin_emp_stream")
    db.execute("INSERT INTO d_kin_employee VALUES (3, 'cy', 'eng')")
    db.execute("UPDATE d_kin_employee SET dept = 'mgmt' WHERE id = 1")
    db.execute("DELETE FROM d_kin_employee WHERE id = 2")
    wait_caught_up(db, "d_kin_emp_stream", timeout=60)
    src = db.execute("SELECT id, name, dept FROM d_kin_employee ORDER BY id").fetchall()
    assert db.execute("SELECT id, name, dept FROM example.ds_employee_backup ORDER BY id").fetchall() == src == [(1, "ann", "mgmt"), (3, "cy", "eng")]
    # A second stream with a WHERE condition into a table without a schema prefix.
    rows = run(db, "CREATE DATA SINK d_kin_local_filtered LOCATION = 'table://d_kin_filtered';\n"
                   "CREATE STREAM d_kin_filtered_stream ON TABLE d_kin_employee WHERE id > 2 WITH OPTIONS (DATASINK_NAME = 'd_kin_local_filtered', TYPE = 'upsert')")
    assert summary(rows) == [("CREATE DATA SINK", "connection", "d_kin_local_filtered"), ("CREATE STREAM", "sink", "d_kin_filtered_stream")]
    clean.append("DROP TABLE IF EXISTS d_kin_filtered")
    assert "id > 2" in sink_row(db, "d_kin_filtered_stream")["row_filter"]
    db.execute("INSERT INTO d_kin_employee VALUES (4, 'di', 'ops')")
    wait_caught_up(db, "d_kin_filtered_stream", timeout=60)
    assert db.execute("SELECT id FROM d_kin_filtered ORDER BY id").fetchall() == [(3,), (4,)]
    rows = run(db, "DROP STREAM d_kin_filtered_stream; DROP STREAM d_kin_emp_stream; DROP DATA SINK kin_dsink_local; DROP DATA SINK d_kin_local_filtered")
    assert [r["details"].get("dropped") for r in rows] == [True, True, True, True]


KIN_CREDENTIALS = {
    # name: (type, identity, secret)
    "d_kin_azure_cred": ("azure_storage_key", "dkinaccount", "d-azure-key-secret-a1"),
    "d_kin_gcs_cred": ("gcs_service_account_keys", "d-gcs-sa", "d-gcs-key-secret-b2"),
    "d_kin_jdbc_cred": ("jdbc", "postgres", "d-jdbc-secret-c3"),
    "d_kin_kafka_cred": ("kafka", "d_kafka_user", "d-kafka-secret-d4"),
    "d_kin_aws_cred": ("aws_access_key", "AKIDDKIN", "d-aws-secret-e5"),
    "d_kin_hook_cred": ("password", "hookuser", "d-hook-secret-f6"),
}

# The Python API examples, translated to SQL one for one (placeholders filled; the
# optional bracketed options kept where the connector knows them). Bare provider
# locations ('azure', 'gcs', 's3') stand for 'azure[://<host>]' etc.
# (id, statement, data sink name, connector, options expected, credential used)
KIN_TRANSLATED = [
    ("azure-credential", "CREATE DATA SINK d_kin_azure_cred_ds LOCATION = 'azure' WITH OPTIONS "
     "(CREDENTIAL = 'd_kin_azure_cred', AZURE_CONTAINER_NAME = 'd-container')",
     "d_kin_azure_cred_ds", "azblob", {"azure_container_name": "d-container"}, "d_kin_azure_cred"),
    ("azure-managed", "CREATE DATA SINK d_kin_azure_managed_ds LOCATION = 'azure' WITH OPTIONS (USE_MANAGED_CREDENTIALS = 'true', "
     "AZURE_STORAGE_ACCOUNT_NAME = 'dkinaccount', AZURE_CONTAINER_NAME = 'd-container', AZURE_TENANT_ID = '00000000-0000-0000-0000-00000000d1d1')",
     "d_kin_azure_managed_ds", "azblob", {"use_managed_credentials": "true", "azure_storage_account_name": "dkinaccount",
                                          "azure_container_name": "d-container", "azure_tenant_id": "00000000-0000-0000-0000-00000000d1d1"}, None),
    ("gcs-credential", "CREATE DATA SINK example.d_kin_gcs_cred_ds LOCATION = 'gcs' WITH OPTIONS "
     "(CREDENTIAL = 'd_kin_gcs_cred', GCS_PROJECT_ID = 'd-project', GCS_BUCKET_NAME = 'd-bucket')",
     "example.d_kin_gcs_cred_ds", "gcs", {"gcs_project_id": "d-project", "gcs_bucket_name": "d-bucket"}, "d_kin_gcs_cred"),
    ("gcs-managed", "CREATE DATA SINK d_kin_gcs_managed_ds LOCATION = 'gcs' WITH OPTIONS "
     "(USE_MANAGED_CREDENTIALS = 'true', GCS_PROJECT_ID = 'd-project', GCS_BUCKET_NAME = 'd-bucket')",
     "d_kin_gcs_managed_ds", "gcs", {"use_managed_credentials": "true", "gcs_bucket_name": "d-bucket"}, None),
    ("gcs-public", "CREATE DATA SINK d_kin_gcs_public_ds LOCATION = 'gcs' WITH OPTIONS (GCS_BUCKET_NAME = 'd-public-bucket')",
     "d_kin_gcs_public_ds", "gcs", {"gcs_bucket_name": "d-public-bucket"}, None),
    ("gcs-json-key", "CREATE DATA SINK d_kin_gcs_key_ds LOCATION = 'gcs' WITH OPTIONS "
     "(GCS_SERVICE_ACCOUNT_KEYS = '{\"type\": \"service_account\", \"project_id\": \"d-project\"}', GCS_PROJECT_ID = 'd-project', GCS_BUCKET_NAME = 'd-bucket')",
     "d_kin_gcs_key_ds", "gcs", {"gcs_bucket_name": "d-bucket"}, None),
    ("jdbc-credential", "CREATE DATA SINK d_kin_jdbc_cred_ds LOCATION = 'jdbc:postgresql://127.0.0.1:5496/postgres' WITH OPTIONS "
     "(CREDENTIAL = 'd_kin_jdbc_cred')",
     "d_kin_jdbc_cred_ds", "jdbc", {}, "d_kin_jdbc_cred"),
    ("jdbc-password-in-url", "CREATE DATA SINK d_kin_jdbc_url_ds LOCATION = 'jdbc:mysql://127.0.0.1:3306/pg_sink_it?user=pgsink&password=d-url-pw'",
     "d_kin_jdbc_url_ds", "jdbc", {}, None),
    ("kafka-credential", "CREATE DATA SINK d_kin_kafka_cred_ds LOCATION = 'kafka://kafka.abc.com:9092' WITH OPTIONS "
     "(CREDENTIAL = 'd_kin_kafka_cred', KAFKA_TOPIC_NAME = 'd-kin-topic')",
     "d_kin_kafka_cred_ds", "kafka", {}, "d_kin_kafka_cred"),
    ("kafka-public", "CREATE DATA SINK d_kin_kafka_public_ds LOCATION = 'kafka://kafka.abc.com:9092' WITH OPTIONS (KAFKA_TOPIC_NAME = 'd-kin-topic')",
     "d_kin_kafka_public_ds", "kafka", {}, None),
    ("local-table", "CREATE DATA SINK d_kin_local_ds LOCATION = 'table://d_kin_local_target'",
     "d_kin_local_ds", "table", {}, None),
    ("s3-credential", "CREATE DATA SINK d_kin_s3_cred_ds LOCATION = 's3' WITH OPTIONS "
     "(CREDENTIAL = 'd_kin_aws_cred', S3_BUCKET_NAME = 'd-bucket', S3_REGION = 'us-east-2')",
     "d_kin_s3_cred_ds", "s3", {"s3_bucket_name": "d-bucket", "s3_region": "us-east-2"}, "d_kin_aws_cred"),
    ("s3-managed", "CREATE DATA SINK d_kin_s3_managed_ds LOCATION = 's3' WITH OPTIONS "
     "(USE_MANAGED_CREDENTIALS = 'true', S3_BUCKET_NAME = 'd-bucket', S3_REGION = 'us-east-2')",
     "d_kin_s3_managed_ds", "s3", {"use_managed_credentials": "true", "s3_bucket_name": "d-bucket", "s3_region": "us-east-2"}, None),
    ("s3-public", "CREATE DATA SINK d_kin_s3_public_ds LOCATION = 's3' WITH OPTIONS (S3_BUCKET_NAME = 'd-public-bucket', S3_REGION = 'us-east-2')",
     "d_kin_s3_public_ds", "s3", {"s3_bucket_name": "d-public-bucket", "s3_region": "us-east-2"}, None),
    ("webhook-https-credential", "CREATE DATA SINK d_kin_hook_https_ds LOCATION = 'https://hooks.example.com:8443' WITH OPTIONS "
     "(CREDENTIAL = 'd_kin_hook_cred')",
     "d_kin_hook_https_ds", "webhook", {}, "d_kin_hook_cred"),
    ("webhook-http", "CREATE DATA SINK d_kin_hook_http_ds LOCATION = 'http://127.0.0.1:18099'",
     "d_kin_hook_http_ds", "webhook", {}, None),
]


def location_of(sql):
    return re.search(r"LOCATION = '([^']*)'", sql).group(1)


@pytest.fixture
def kin_credentials(db, clean):
    stmts = ";\n".join(f"CREATE CREDENTIAL {n} TYPE = '{t}', IDENTITY = '{i}', SECRET = '{s}'" for n, (t, i, s) in KIN_CREDENTIALS.items())
    rows = run(db, stmts)
    assert summary(rows) == [("CREATE CREDENTIAL", "credential", n) for n in KIN_CREDENTIALS]
    yield clean


@pytest.mark.parametrize("sql,name,connector,expected,credential", [pytest.param(*c[1:], id=c[0]) for c in KIN_TRANSLATED])
def test_kin_python_examples_translated_to_sql(db, kin_credentials, sql, name, connector, expected, credential):
    # The hosts of these examples (cloud storage, kafka.abc.com, hooks.example.com, a
    # MariaDB that may not have the database) are not reached: validation is off.
    db.execute("SET pg_sink.validate_connections = off")
    rows = run(db, sql)
    assert summary(rows) == [("CREATE DATA SINK", "connection", name)]
    assert rows[0]["connector"] == connector and rows[0]["details"].get("created") is True
    c = connection_row(db, name)
    assert c is not None and c["connector"] == connector
    text = json.dumps(c["options"])
    for k, v in expected.items():
        assert str(as_json(c["options"][k])).lower() == v.lower(), (k, c["options"])
    loc = c["options"].get("location")
    if isinstance(loc, dict):  # a location with a password in it is kept as a secret
        assert loc == {"secret": f"connection:{name}:location"}, loc
        text += one(db, "SELECT value FROM sink.secrets WHERE name = %s", loc["secret"])
    assert location_of(sql).split("://", 1)[-1].split("?")[0] in text, f"location kept: {text}"
    if credential:
        assert credential in text
    no_secret_in(c["options"], *(s for _, _, s in KIN_CREDENTIALS.values()))
    shown = show(db, f"DATA SINK {name}")
    assert [r["name"] for r in shown] == [name] and shown[0]["connector"] == connector
    no_secret_in(shown, *(s for _, _, s in KIN_CREDENTIALS.values()))
    assert created_by(db, "connection", name) == "kinetica"
    # OR REPLACE swaps the definition in place.
    replaced = run(db, sql.replace("CREATE DATA SINK", "CREATE OR REPLACE DATA SINK"))
    assert [(r["kind"], r["name"]) for r in replaced] == [("connection", name)] and replaced[0]["command"].startswith("CREATE")
    assert one(db, "SELECT count(*) FROM sink.connections WHERE name = %s", name) == 1
    assert run(db, f"DROP DATA SINK {name}")[0]["details"].get("dropped") is True
    assert connection_row(db, name) is None


def test_kin_hdfs_example_takes_an_hdfs_credential_only(db, kin_credentials):
    before = objects(db)
    # The seed's example with a credential of another type is refused, naming why.
    sql = ("CREATE DATA SINK d_kin_hdfs_ds LOCATION = 'hdfs://namenode.example.com:8020' "
           "WITH OPTIONS (CREDENTIAL = 'd_kin_hook_cred')")
    st, msg, detail, hint = fails(db, sql)
    assert st == "22023" and "hdfs" in msg.lower(), (st, msg)
    assert (detail or "").strip() or (hint or "").strip()
    assert objects(db) == before
    # With a location alone it is an hdfs connection (the sinks that use it reach it).
    run(db, "CREATE DATA SINK d_kin_hdfs_ds LOCATION = 'hdfs://namenode.example.com:8020'")
    assert connection_row(db, "d_kin_hdfs_ds")["connector"] == "hdfs"
    run(db, "DROP DATA SINK d_kin_hdfs_ds")


# ----------------------------------------------------------------- statements in general

def test_statements_run_in_order_with_comments_quoting_and_trailing_semicolon(db, clean):
    rows = run(db, '''
-- a comment first
CREATE SECRET d_multi_one AS 'one';  /* a block
comment; with a semicolon */ create secret IF NOT EXISTS d_multi_one as 'ignored';
CREATE SECRET "D_Multi Quoted ""x""" AS 'it''s';
CREATE SECRET D_MULTI_UPPER AS 'upper';
CREATE CONNECTION d_multi_conn TO KAFKA (
    BROKER '127.0.0.1:1',
    SASL USERNAME = 'u',
    SASL PASSWORD = SECRET d_multi_one,
) WITH (VALIDATE = false);
''')
    assert summary(rows) == [("CREATE SECRET", "secret", "d_multi_one"), ("CREATE SECRET", "secret", "d_multi_one"),
                             ("CREATE SECRET", "secret", 'D_Multi Quoted "x"'), ("CREATE SECRET", "secret", "d_multi_upper"),
                             ("CREATE CONNECTION", "connection", "d_multi_conn")]
    assert created(rows) == [True, False, True, True, True]
    assert secret_value(db, "d_multi_one") == "one"
    assert secret_value(db, 'D_Multi Quoted "x"') == "it's"
    assert connection_row(db, "d_multi_conn")["options"]["sasl_password"] == {"secret": "d_multi_one"}
    rows = run(db, 'DROP CONNECTION d_multi_conn; DROP SECRET d_multi_one; DROP SECRET "D_Multi Quoted ""x"""; '
                   "DROP SECRET d_multi_upper RESTRICT; DROP SECRET IF EXISTS d_multi_one;")
    assert [r["details"].get("dropped") for r in rows] == [True, True, True, True, False]
    assert one(db, "SELECT count(*) FROM sink.secrets WHERE name ILIKE 'd_multi%%'") == 0


# ----------------------------------------------------------------- malformed statements

@pytest.fixture(scope="module")
def mx(server):
    """Objects the malformed statements collide with or refer to."""
    conn = connect()
    d = out_dir("d_m_files")

    def drop():
        for s in ("d_m_sink",):
            conn.execute("SELECT sink.drop_sink(%s, if_exists => true)", (s,))
        for c in ("d_m_kafka", "d_m_file"):
            conn.execute("SELECT sink.drop_connection(%s, if_exists => true)", (c,))
        conn.execute("SELECT sink.drop_secret('d_m_secret', if_exists => true)")
        conn.execute("SELECT sink.drop_credential('d_m_cred', true)")
        conn.execute("DROP TABLE IF EXISTS d_m_pk, d_m_nopk CASCADE")

    drop()
    conn.execute("CREATE TABLE d_m_pk (id int PRIMARY KEY, v text, h jsonb)")
    conn.execute("CREATE TABLE d_m_nopk (a int, b text)")
    conn.execute("SELECT sink.create_secret('d_m_secret', 'd-m-secret-value')")
    conn.execute("SELECT sink.create_connection('d_m_kafka', 'kafka', %s::jsonb)",
                 (json.dumps({"brokers": "127.0.0.1:1", "validate": False, "sasl_username": "u", "sasl_password": {"secret": "d_m_secret"}}),))
    conn.execute("SELECT sink.create_connection('d_m_file', 'file', %s::jsonb)", (json.dumps({"path": d}),))
    conn.execute("SELECT sink.create_sink('d_m_sink', 'd_m_pk', connection => 'd_m_file')")
    conn.execute("SELECT sink.create_credential('d_m_cred', 'kafka', 'd_user', 'd-m-cred-secret')")
    wait_started(conn, "d_m_sink")
    yield
    drop()
    conn.close()


def footprint(conn):
    q = lambda sql: conn.execute(sql).fetchall()
    return {
        "objects": q("SELECT kind, name FROM sink.objects ORDER BY 1, 2"),
        "sinks": q("SELECT name, options::text FROM sink.sinks ORDER BY 1"),
        "connections": q("SELECT name, options::text FROM sink.connections ORDER BY 1"),
        "secrets": q("SELECT name, value FROM sink.secrets ORDER BY 1"),
        "slots": q("SELECT slot_name FROM pg_replication_slots ORDER BY 1"),
        "publications": q("SELECT pubname FROM pg_publication ORDER BY 1"),
        "tables": q("SELECT oid::regclass::text FROM pg_class WHERE relkind IN ('r', 'p') AND relnamespace <> 'pg_catalog'::regnamespace "
                    "AND relnamespace <> 'information_schema'::regnamespace ORDER BY 1"),
    }


SINK_M = "CREATE SINK d_x FROM d_m_pk INTO KAFKA CONNECTION d_m_kafka "
SINK_R = "CREATE SINK d_x FROM d_m_pk WITH (connector = 'file', path = '/tmp/pg_sink_test/out/d_x'"
SYN = ("42601",)

# (id, statement, accepted SQLSTATEs, fragment that must appear in message/detail/hint
#  (a tuple: any one of them)). 42601 cases without a fragment must say "syntax error".
MALFORMED = [
    # ---- Materialize
    ("mz-missing-from", "CREATE SINK d_x INTO KAFKA CONNECTION d_m_kafka (TOPIC 'd-x')", SYN, None),
    ("mz-missing-into", "CREATE SINK d_x FROM d_m_pk KAFKA CONNECTION d_m_kafka (TOPIC 'd-x')", SYN, None),
    ("mz-missing-topic-empty-parens", SINK_M + "() FORMAT JSON", SYN, ("syntax error", "TOPIC")),
    ("mz-missing-topic-no-parens", SINK_M + "FORMAT JSON", SYN, None),
    ("mz-unknown-keyword-at-end", SINK_M + "(TOPIC 'd-x') FORMAT JSON SPARKLE", SYN, None),
    ("mz-unknown-statement", "CREATE WIDGET d_x", SYN, "WIDGET"),
    ("mz-unterminated-string", "CREATE SECRET d_x AS 'never closed", SYN, "unterminated"),
    ("mz-unterminated-identifier", "CREATE SECRET \"d_x AS 'v'", SYN, "unterminated"),
    ("mz-unterminated-comment", "CREATE SECRET d_x AS 'v' /* open", SYN, "unterminated"),
    ("mz-unbalanced-open-paren", SINK_M + "(TOPIC 'd-x' FORMAT JSON", SYN, None),
    ("mz-unbalanced-close-paren", SINK_M + "(TOPIC 'd-x')) FORMAT JSON", SYN, None),
    ("mz-with-missing-equals", SINK_M + "(TOPIC 'd-x') FORMAT JSON WITH (SNAPSHOT false)", SYN, None),
    ("mz-missing-comma-between-options", SINK_M + "(TOPIC 'd-x' COMPRESSION TYPE 'gzip')", SYN, None),
    ("mz-bad-envelope", SINK_M + "(TOPIC 'd-x') KEY (id) FORMAT JSON ENVELOPE APPEND", SYN, None),
    ("mz-avro-without-using", SINK_M + "(TOPIC 'd-x') KEY (id) FORMAT AVRO ENVELOPE UPSERT", SYN, None),
    ("mz-key-format-without-value-format", SINK_M + "(TOPIC 'd-x') KEY (id) KEY FORMAT JSON ENVELOPE UPSERT", SYN, None),
    ("mz-not-enforced-without-key", SINK_M + "(TOPIC 'd-x') NOT ENFORCED FORMAT JSON ENVELOPE UPSERT", SYN, None),
    ("mz-empty-key-list", SINK_M + "(TOPIC 'd-x') KEY () FORMAT JSON ENVELOPE UPSERT", SYN, None),
    ("mz-map-without-arrow", SINK_M + "(TOPIC 'd-x', TOPIC CONFIG MAP['cleanup.policy' 'compact'])", SYN, None),
    ("mz-connection-without-parens", "CREATE CONNECTION d_x TO KAFKA BROKER '127.0.0.1:1'", SYN, None),
    ("mz-secret-without-as", "CREATE SECRET d_x 'value'", SYN, None),
    ("mz-e-string-not-supported", "CREATE SECRET d_x AS E'abc'", SYN, None),
    ("mz-show-unknown", "SHOW WIDGETS", SYN, "WIDGETS"),
    ("mz-garbage-after-drop", "DROP SINK IF EXISTS d_x garbage", SYN, None),
    ("mz-headers-missing-column", SINK_M + "(TOPIC 'd-x') KEY (id) HEADERS nope_hdrs FORMAT JSON ENVELOPE UPSERT", ("42703",), "nope_hdrs"),
    ("mz-unknown-connection", "CREATE SINK d_x FROM d_m_pk INTO KAFKA CONNECTION d_nope_conn (TOPIC 'd-x')", ("42704",), "d_nope_conn"),
    ("mz-unknown-csr-connection", SINK_M + "(TOPIC 'd-x') KEY (id) FORMAT AVRO USING CONFLUENT SCHEMA REGISTRY CONNECTION d_nope_csr ENVELOPE UPSERT",
     ("42704",), "d_nope_csr"),
    ("mz-unknown-secret", "CREATE CONNECTION d_x TO KAFKA (BROKER '127.0.0.1:1', SASL USERNAME = 'u', SASL PASSWORD = SECRET d_nope_secret) "
     "WITH (VALIDATE = false)", ("42704",), "d_nope_secret"),
    ("mz-duplicate-secret", "CREATE SECRET d_m_secret AS 'again'", ("42710",), "d_m_secret"),
    ("mz-duplicate-connection", "CREATE CONNECTION d_m_kafka TO KAFKA (BROKER '127.0.0.1:1') WITH (VALIDATE = false)", ("42710",), "d_m_kafka"),
    ("mz-duplicate-sink", "CREATE SINK d_m_sink FROM d_m_pk INTO KAFKA CONNECTION d_m_kafka (TOPIC 'd-x')", ("42710",), "d_m_sink"),
    ("mz-source-table-missing", "CREATE SINK d_x FROM d_nope_table INTO KAFKA CONNECTION d_m_kafka (TOPIC 'd-x')", ("42P01",), "d_nope_table"),
    ("mz-key-column-missing", SINK_M + "(TOPIC 'd-x') KEY (nope_col) FORMAT JSON ENVELOPE UPSERT", ("42703",), "nope_col"),
    ("mz-format-csv", SINK_M + "(TOPIC 'd-x') KEY (id) FORMAT CSV ENVELOPE UPSERT", ("0A000",), "CSV"),
    ("mz-upsert-key-not-unique", SINK_M + "(TOPIC 'd-x') KEY (v) FORMAT JSON ENVELOPE UPSERT", ("22023",), "unique"),
    ("mz-bad-boolean", SINK_M + "(TOPIC 'd-x') FORMAT JSON WITH (SNAPSHOT = maybe)", ("22023",), "snapshot"),
    ("mz-partition-count-zero", SINK_M + "(TOPIC 'd-x', TOPIC PARTITION COUNT 0)", ("22023",), "partition"),
    ("mz-bad-compression", SINK_M + "(TOPIC 'd-x', COMPRESSION TYPE 'brotli')", ("22023",), "brotli"),
    ("mz-unknown-sink-option", SINK_M + "(TOPIC 'd-x', COLOUR 'red')", ("22023",), "colour"),
    ("mz-bad-sasl-mechanism", "CREATE CONNECTION d_x TO KAFKA (BROKER '127.0.0.1:1', SASL MECHANISMS = 'GSSAPI') WITH (VALIDATE = false)",
     ("22023",), "GSSAPI"),
    ("mz-partition-by-unknown-column", SINK_M + "(TOPIC 'd-x', PARTITION BY = seahash(nope_col::text)) KEY (id) FORMAT JSON ENVELOPE UPSERT",
     ("42703",), "nope_col"),
    ("mz-drop-missing-sink", "DROP SINK d_nope_sink", ("42704",), "d_nope_sink"),
    ("mz-drop-connection-in-use", "DROP CONNECTION d_m_file", ("2BP01",), "d_m_sink"),
    ("mz-drop-secret-in-use", "DROP SECRET d_m_secret", ("2BP01",), "d_m_kafka"),
    ("mz-alter-missing-secret", "ALTER SECRET d_nope_secret AS 'x'", ("42704",), "d_nope_secret"),
    ("mz-grant-missing-connection", "GRANT USAGE ON CONNECTION d_nope_conn TO postgres", ("42704",), "d_nope_conn"),
    ("mz-grant-missing-role", "GRANT USAGE ON CONNECTION d_m_kafka TO d_nope_role", ("42704",), "d_nope_role"),
    # ---- RisingWave
    ("rw-missing-connector", "CREATE SINK d_x FROM d_m_pk WITH (path = '/tmp/pg_sink_test/out/d_x')", ("22023", "42601"), "connector"),
    ("rw-unknown-connector", "CREATE SINK d_x FROM d_m_pk WITH (connector = 'telepathy')", ("22023",), "telepathy"),
    ("rw-connector-clickhouse", "CREATE SINK d_x FROM d_m_pk WITH (connector = 'clickhouse', type = 'append-only', clickhouse.url = 'http://b')",
     ("0A000",), "clickhouse"),
    ("rw-encode-protobuf", "CREATE SINK d_x FROM d_m_pk WITH (connector = 'kafka', properties.bootstrap.server = '127.0.0.1:1', topic = 'd-x') "
     "FORMAT PLAIN ENCODE PROTOBUF", ("0A000",), "PROTOBUF"),
    ("rw-upsert-keyless-table", "CREATE SINK d_x FROM d_m_nopk WITH (connector = 'file', path = '/tmp/pg_sink_test/out/d_x') FORMAT UPSERT ENCODE JSON",
     ("22023",), "key"),
    ("rw-kinesis-keys-not-paired", "CREATE SINK d_x FROM d_m_pk WITH (connector = 'kinesis', stream = 'd-x', aws.region = 'us-east-1', "
     "aws.credentials.access_key_id = 'AK')", ("22023",), "secret_access_key"),
    ("rw-nats-user-without-password", "CREATE SINK d_x FROM d_m_pk WITH (connector = 'nats', server_url = '127.0.0.1:4222', subject = 'd.x', "
     "connect_mode = 'user_and_password', username = 'u') FORMAT PLAIN ENCODE JSON", ("22023",), "password"),
    ("rw-missing-equals", "CREATE SINK d_x FROM d_m_pk WITH (connector 'kafka')", SYN, None),
    ("rw-with-without-parens", "CREATE SINK d_x FROM d_m_pk WITH connector = 'file'", SYN, None),
    ("rw-format-without-encode", SINK_R + ") FORMAT PLAIN", SYN, None),
    ("rw-bad-format", SINK_R + ") FORMAT SIDEWAYS ENCODE JSON", SYN, None),
    ("rw-unterminated-backtick", "CREATE SINK d_x FROM d_m_pk WITH (connector = 'nats', subject = `d.x)", SYN, "unterminated"),
    ("rw-nats-block-missing-comma", "CREATE SINK d_x FROM d_m_pk WITH (\n   connector='nats',\n   server_url='127.0.0.1:4222',\n"
     "   subject='d.x',\n   connect_mode='user_and_password'\n   username='u',\n   password='p'\n) FORMAT PLAIN ENCODE JSON", SYN, None),
    ("rw-secret-without-as", "CREATE SECRET d_x WITH (backend = 'meta')", SYN, None),
    ("rw-bad-type", SINK_R + ", type = 'sideways')", ("22023",), "sideways"),
    ("rw-unknown-option", SINK_R + ", bogus.option = '1')", ("22023",), "bogus"),
    ("rw-bad-topic-name", "CREATE SINK d_x FROM d_m_pk WITH (connector = 'kafka', properties.bootstrap.server = '127.0.0.1:1', topic = 'bad topic')",
     ("22023",), "topic"),
    ("rw-unknown-connection", "CREATE SINK d_x FROM d_m_pk WITH (connector = 'file', connection = 'd_nope_conn')", ("42704",), "d_nope_conn"),
    ("rw-as-select-missing-column", "CREATE SINK d_x AS SELECT id, nope_col FROM d_m_pk WITH (connector = 'file', path = '/tmp/pg_sink_test/out/d_x')",
     ("42703",), "nope_col"),
    ("rw-source-table-missing", "CREATE SINK d_x FROM d_nope_table WITH (connector = 'file', path = '/tmp/pg_sink_test/out/d_x')", ("42P01",), "d_nope_table"),
    ("rw-duplicate-sink", "CREATE SINK d_m_sink FROM d_m_pk WITH (connector = 'file', path = '/tmp/pg_sink_test/out/d_x')", ("42710",), "d_m_sink"),
    ("rw-drop-missing-sink", "DROP SINK d_nope_sink CASCADE", ("42704",), "d_nope_sink"),
    # ---- Kinetica
    ("kin-location-missing", "CREATE DATA SINK d_x WITH OPTIONS (KAFKA_TOPIC_NAME = 'd-x')", SYN, None),
    ("kin-location-missing-equals", "CREATE DATA SINK d_x LOCATION 'table://public.d_x'", SYN, None),
    ("kin-with-options-without-parens", "CREATE DATA SINK d_x LOCATION = 'table://public.d_x' WITH OPTIONS KAFKA_TOPIC_NAME = 'x'", SYN, None),
    ("kin-bad-scheme", "CREATE DATA SINK d_x LOCATION = 'gopher://example.com:70'", ("42601", "22023", "0A000"), "gopher"),
    ("kin-hdfs-kerberos", "CREATE DATA SINK d_x LOCATION = 'hdfs://namenode:8020' WITH OPTIONS (HDFS_USE_KERBEROS = 'true')", ("22023",), "kerberos"),
    ("kin-unknown-option", "CREATE DATA SINK d_x LOCATION = 'table://public.d_x' WITH OPTIONS (BOGUS_OPTION = 'x')", ("22023",), "bogus_option"),
    ("kin-duplicate-data-sink", "CREATE DATA SINK d_m_file LOCATION = 'file:///tmp/pg_sink_test/out/d_x'", ("42710",), "d_m_file"),
    ("kin-kafka-unreachable", "CREATE DATA SINK d_x LOCATION = 'kafka://127.0.0.1:1' WITH OPTIONS (KAFKA_TOPIC_NAME = 'd-x')", ("08000",), "127.0.0.1:1"),
    ("kin-unknown-credential", "CREATE DATA SINK d_x LOCATION = 'kafka://127.0.0.1:1' WITH OPTIONS (CREDENTIAL = 'd_nope_cred', "
     "KAFKA_TOPIC_NAME = 'd-x', SKIP_VALIDATION = 'true')", ("42704",), "d_nope_cred"),
    ("kin-credential-wrong-type", "CREATE DATA SINK d_x LOCATION = 'azure' WITH OPTIONS (CREDENTIAL = 'd_m_cred', AZURE_CONTAINER_NAME = 'c')",
     ("22023",), "azure_storage_key"),
    ("kin-credential-unknown-type", "CREATE CREDENTIAL d_x TYPE = 'carrier_pigeon', IDENTITY = 'u', SECRET = 'p'", ("22023",), "carrier_pigeon"),
    ("kin-credential-missing-equals", "CREATE CREDENTIAL d_x TYPE 'kafka', IDENTITY = 'u', SECRET = 'p'", SYN, None),
    ("kin-stream-unknown-data-sink", "CREATE STREAM d_x ON TABLE d_m_pk WITH OPTIONS (DATASINK_NAME = 'd_nope_ds')", ("42704",), "d_nope_ds"),
    ("kin-stream-without-datasink-name", "CREATE STREAM d_x ON TABLE d_m_pk WITH OPTIONS (TYPE = 'upsert')", ("22023", "42601"), "DATASINK_NAME"),
    ("kin-stream-without-options", "CREATE STREAM d_x ON TABLE d_m_pk", ("42601", "22023"), None),
    ("kin-stream-table-missing", "CREATE STREAM d_x ON TABLE d_nope_table WITH OPTIONS (DATASINK_NAME = 'd_m_file')", ("42P01",), "d_nope_table"),
    ("kin-stream-where-unknown-column", "CREATE STREAM d_x ON TABLE d_m_pk WHERE nope_col > 1 WITH OPTIONS (DATASINK_NAME = 'd_m_file')",
     ("42703",), "nope_col"),
    ("kin-stream-bad-type", "CREATE STREAM d_x ON TABLE d_m_pk WITH OPTIONS (DATASINK_NAME = 'd_m_file', TYPE = 'sideways')", ("22023",), "sideways"),
    ("kin-alter-missing-data-sink", "ALTER DATA SINK d_nope_ds SET PROPERTY KAFKA_TOPIC_NAME = 'x'", ("42704",), "d_nope_ds"),
    ("kin-alter-missing-credential", "ALTER CREDENTIAL d_nope_cred SET PROPERTY IDENTITY = 'x'", ("42704",), "d_nope_cred"),
    ("kin-drop-missing-data-sink", "DROP DATA SINK d_nope_ds", ("42704",), "d_nope_ds"),
    ("kin-drop-missing-credential", "DROP CREDENTIAL d_nope_cred", ("42704",), "d_nope_cred"),
    ("kin-drop-missing-stream", "DROP STREAM d_nope_stream", ("42704",), "d_nope_stream"),
    ("kin-grant-missing-data-sink", "GRANT CONNECT ON DATA SINK d_nope_ds TO postgres", ("42704",), "d_nope_ds"),
    ("kin-show-credential-without-name", "SHOW CREDENTIAL", SYN, None),
    # ---- any dialect
    ("empty-statement", "", SYN, ("syntax error", "empty")),
    ("only-comments", "  -- nothing here\n /* nor here */ ", SYN, ("syntax error", "empty")),
    ("plain-sql-is-not-a-sink-statement", "SELECT 1", SYN, "SELECT"),
    ("unknown-leading-word", "UPSERT INTO d_m_pk VALUES (1)", SYN, "UPSERT"),
    ("multi-second-fails-semantic", "CREATE SECRET d_multi_a AS 'a'; CREATE SINK d_multi_b FROM d_nope_table WITH (connector = 'file', "
     "path = '/tmp/pg_sink_test/out/d_x')", ("42P01",), "d_nope_table"),
    ("multi-duplicate-within-call", "CREATE SECRET d_multi_c AS 'c'; CREATE SECRET d_multi_c AS 'c'", ("42710",), "d_multi_c"),
    ("multi-second-ends-early", "CREATE SECRET d_multi_d AS 'd';\nCREATE SINK", SYN, None),
    ("multi-missing-semicolon", "CREATE SECRET d_multi_e AS 'e' CREATE SECRET d_multi_f AS 'f'", SYN, None),
    ("multi-postgres-statement-second", "CREATE SECRET d_multi_g AS 'g'; DROP TABLE d_m_pk", SYN, "TABLE"),
    ("multi-data-sink-then-bad-stream", "CREATE DATA SINK d_multi_ds LOCATION = 'file:///tmp/pg_sink_test/out/d_multi';\n"
     "CREATE STREAM d_multi_s ON TABLE d_m_pk WITH OPTIONS (DATASINK_NAME = 'd_multi_ds', TYPE = 'sideways')", ("22023",), "sideways"),
    ("multi-three-dialects-last-fails", "CREATE CONNECTION d_multi_k TO KAFKA (BROKER '127.0.0.1:1') WITH (VALIDATE = false);\n"
     "CREATE CREDENTIAL d_multi_cred TYPE = 'kafka', IDENTITY = 'u', SECRET = 'p';\n"
     "CREATE SINK d_multi_s FROM d_m_pk WITH (connector = 'telepathy')", ("22023",), "telepathy"),
]


@pytest.mark.parametrize("sql,states,fragment", [pytest.param(*c[1:], id=c[0]) for c in MALFORMED])
def test_malformed_statement_is_a_clean_error_and_creates_nothing(db, mx, sql, states, fragment):
    before = footprint(db)
    st, msg, detail, hint = fails(db, sql)
    detail, hint = detail or "", hint or ""
    assert st in states, (st, msg, detail, hint)
    assert msg and msg.strip(), "a message"
    assert detail.strip() or hint.strip(), f"no detail or hint for: {msg}"
    text = f"{msg}\n{detail}\n{hint}"
    if st == "42601":
        if fragment is None:
            assert "syntax error" in msg, msg
        assert re.search(r"expected|position \d+|line \d+, column \d+", detail + "\n" + hint, re.I), (msg, detail, hint)
    if fragment is not None:
        fragments = fragment if isinstance(fragment, tuple) else (fragment,)
        assert any(f.lower() in text.lower() for f in fragments), (fragment, text)
    assert footprint(db) == before, "nothing may be created, altered or dropped"


def where(sql, anchor):
    """1-based offset, line and column of `anchor` in `sql` (ASCII statements)."""
    i = sql.index(anchor)
    line = sql.count("\n", 0, i) + 1
    column = i - (sql.rfind("\n", 0, i) + 1) + 1
    return i + 1, line, column


# (id, statement, offending token, a token the detail/hint must list as expected)
POSITIONS = [
    ("bad-envelope", "CREATE SINK d_p1 FROM d_m_pk INTO KAFKA CONNECTION d_m_kafka (TOPIC 'd-p') KEY (id) FORMAT JSON ENVELOPE SIDEWAYS",
     "SIDEWAYS", "UPSERT"),
    ("key-format-without-value-format", "CREATE SINK d_p2\n  FROM d_m_pk\n  INTO KAFKA CONNECTION d_m_kafka (TOPIC 'd-p')\n  KEY (id)\n"
     "  KEY FORMAT JSON\n  ENVELOPE UPSERT", "ENVELOPE", "VALUE"),
    ("missing-from", "CREATE SINK d_p3 INTO KAFKA CONNECTION d_m_kafka (TOPIC 'd-p')", "INTO", "FROM"),
    ("risingwave-missing-equals", "CREATE SINK d_p4 FROM d_m_pk WITH (\n   connector 'kafka',\n   topic = 'd-p'\n)", "'kafka'", "="),
    ("kinetica-missing-equals", "CREATE DATA SINK d_p5\nLOCATION 'table://public.d_p5'", "'table://public.d_p5'", "="),
    ("nats-block-missing-comma", "CREATE SINK d_p6 FROM d_m_pk WITH (\n   connector='nats',\n   server_url='127.0.0.1:4222',\n   subject='d.p',\n"
     "   connect_mode='plain'\n   username='u'\n) FORMAT PLAIN ENCODE JSON", "username", ")"),
    ("second-statement", "CREATE SECRET d_p7a AS 'a';\n  CREATE SECRET d_p7b AS 'b' 'zz'", "'zz'", None),
]


@pytest.mark.parametrize("sql,token,expected", [pytest.param(*c[1:], id=c[0]) for c in POSITIONS])
def test_syntax_errors_point_at_the_offending_token(db, mx, sql, token, expected):
    before = footprint(db)
    st, msg, detail, hint = fails(db, sql)
    text = f"{detail or ''}\n{hint or ''}"
    assert st == "42601" and "syntax error at or near" in msg, (st, msg)
    if token.startswith("'"):
        assert token.strip("'") in msg, msg
    else:
        assert f'"{token}"' in msg, msg
    pos, line, column = where(sql, token)
    m = re.search(r"position (\d+)", text)
    assert m and int(m.group(1)) == pos, (pos, text)
    m = re.search(r"line (\d+), column (\d+)", text)
    assert m and (int(m.group(1)), int(m.group(2))) == (line, column), ((line, column), text)
    if expected:
        assert re.search(r"expected", text, re.I) and expected in text, text
    assert footprint(db) == before
