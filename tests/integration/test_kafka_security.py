"""Kafka authentication, TLS and authorization against Apache Kafka (scripts/kafka.sh):
SASL PLAIN, SCRAM-SHA-256 and SCRAM-SHA-512 on the SASL_PLAINTEXT listener (port+1),
TLS with server verification (port+2), SASL over TLS (port+3) and mutual TLS
(port+4). Passwords and keys come from secrets. What the sinks deliver is read back
on the PLAINTEXT listener with an independent read_committed consumer."""
import json
import os
import subprocess
import time

import pytest

from conftest import ROOT, one, sqlstate_of, wait_caught_up, wait_for, wait_started
from test_kafka import BROKERS, KENV, PORT, kafka, read_topic

SASL = f"127.0.0.1:{PORT + 1}"
SSL = f"127.0.0.1:{PORT + 2}"
SASL_SSL = f"127.0.0.1:{PORT + 3}"
MTLS = f"127.0.0.1:{PORT + 4}"
TLS = os.path.join(KENV["KAFKA_DATA"], "tls")
MECHANISMS = [("PLAIN", "sink", "sink-secret"), ("SCRAM-SHA-256", "sink256", "sink256-secret"),
              ("SCRAM-SHA-512", "sink512", "sink512-secret")]


def pem(name):
    with open(os.path.join(TLS, name)) as f:
        return f.read()


def kafka_cli(*args):
    out = subprocess.run([os.path.join(ROOT, "scripts", "kafka.sh"), *args], env=KENV, check=True, capture_output=True, text=True)
    return out.stdout


@pytest.fixture(scope="module")
def broker(server):
    kafka("start")
    yield BROKERS
    if not os.environ.get("PGSINK_KEEP_SERVERS"):
        kafka("stop")


@pytest.fixture
def items(db):
    db.execute("DROP TABLE IF EXISTS ks_items")
    db.execute("CREATE TABLE ks_items (id int PRIMARY KEY, v text)")
    yield "ks_items"
    for name in one(db, "SELECT array_agg(name) FROM sink.sinks WHERE name LIKE 'ks\\_%%'") or []:
        db.execute("SELECT sink.drop_sink(%s)", (name,))
    for name in one(db, "SELECT array_agg(name) FROM sink.connections WHERE name LIKE 'ks\\_%%'") or []:
        db.execute("SELECT sink.drop_connection(%s)", (name,))
    for name in one(db, "SELECT array_agg(name) FROM sink.secrets WHERE name LIKE 'ks\\_%%'") or []:
        db.execute("SELECT sink.drop_secret(%s)", (name,))


def delivers(db, sink, connection, topic, n=20):
    """A sink through `connection` delivers n inserts and a delete, exactly once."""
    db.execute("DELETE FROM ks_items")
    db.execute("SELECT sink.create_sink(%s, 'ks_items', options => %s::jsonb, envelope => 'upsert', connection => %s, snapshot => false)",
               (sink, json.dumps({"topic": topic}), connection))
    wait_started(db, sink)
    db.execute("INSERT INTO ks_items SELECT g, 'v' || g FROM generate_series(1, %s) g", (n,))
    db.execute("DELETE FROM ks_items WHERE id = 1")
    wait_caught_up(db, sink)
    msgs = read_topic(topic)
    assert sorted(json.loads(k)["id"] for _, k, v, _ in msgs if v is not None) == list(range(1, n + 1))
    assert [json.loads(k)["id"] for _, k, v, _ in msgs if v is None] == [1]
    assert one(db, "SELECT last_error FROM sink.status WHERE name = %s", sink) is None
    db.execute("SELECT sink.drop_sink(%s)", (sink,))


def refused(db, options, what):
    """create_connection with these options fails as a refusal, leaving nothing."""
    st, m, detail, hint = sqlstate_of(db, "SELECT sink.create_connection('ks_refused', 'kafka', %s::jsonb)", json.dumps(options))
    assert st == "22000" and "refused the connection" in m, (options, st, m, detail)
    assert detail and what in detail.lower(), detail
    assert hint, m
    assert one(db, "SELECT count(*) FROM sink.connections WHERE name = 'ks_refused'") == 0
    return m, detail, hint


@pytest.mark.parametrize("mechanism,user,password", MECHANISMS)
def test_sasl_mechanisms_with_a_password_from_a_secret_deliver(db, broker, items, mechanism, user, password):
    tag = mechanism.lower().replace("-", "")
    db.execute("SELECT sink.create_secret(%s, %s)", (f"ks_pw_{tag}", password))
    db.execute("SELECT sink.create_connection(%s, 'kafka', %s::jsonb)", (f"ks_{tag}", json.dumps({
        "brokers": SASL, "security_protocol": "SASL_PLAINTEXT", "sasl_mechanisms": mechanism,
        "sasl_username": user, "sasl_password": {"secret": f"ks_pw_{tag}"}}),))
    opts = one(db, "SELECT options::text FROM sink.connections WHERE name = %s", f"ks_{tag}")
    assert password not in opts and f"ks_pw_{tag}" in opts, "the password stays in the secret"
    delivers(db, f"ks_{tag}", f"ks_{tag}", f"ks-{tag}")


@pytest.mark.parametrize("mechanism,user,password", MECHANISMS)
def test_a_wrong_password_is_refused_at_creation(db, broker, items, mechanism, user, password):
    _, detail, hint = refused(db, {"brokers": SASL, "security_protocol": "SASL_PLAINTEXT", "sasl_mechanisms": mechanism,
                                   "sasl_username": user, "sasl_password": password + "-wrong"}, "authentication")
    assert "sasl_password" in hint
    # A sink with the same options inline is refused the same way.
    st, m, _, _ = sqlstate_of(db, "SELECT sink.create_sink('ks_bad', 'ks_items', 'kafka', %s::jsonb)", json.dumps({
        "brokers": SASL, "topic": "ks-bad", "security_protocol": "SASL_PLAINTEXT", "sasl_mechanisms": mechanism,
        "sasl_username": user, "sasl_password": "nope"}))
    assert st == "22000" and "refused the connection" in m, (st, m)
    assert one(db, "SELECT count(*) FROM sink.sinks WHERE name = 'ks_bad'") == 0


def test_a_password_changed_on_the_broker_fails_the_running_sink_loudly(db, broker, items):
    """The broker makes clients re-authenticate every 5 s: once the password changes
    there, the running sink fails with the refusal in its status (not a silent
    retry loop); with the secret updated, resume delivers everything written."""
    def set_password(pw):
        kafka_cli("configs", "--alter", "--entity-type", "users", "--entity-name", "ks_rotate",
                  "--add-config", f"SCRAM-SHA-256=[iterations=4096,password={pw}]")
    set_password("rotate-1")
    db.execute("SELECT sink.create_secret('ks_rotate_pw', 'rotate-1')")
    opts = {"brokers": SASL, "topic": "ks-rotate", "security_protocol": "SASL_PLAINTEXT", "sasl_mechanisms": "SCRAM-SHA-256",
            "sasl_username": "ks_rotate", "sasl_password": {"secret": "ks_rotate_pw"}, "timeout_ms": 5000}
    # The user's new credential can take a moment to reach the listener.
    wait_for(lambda: _created(db, "ks_rotate", opts), timeout=30, what="the new SCRAM user to be accepted")
    wait_started(db, "ks_rotate")
    db.execute("INSERT INTO ks_items SELECT g, 'a' FROM generate_series(1, 10) g")
    wait_caught_up(db, "ks_rotate")
    set_password("rotate-2")
    # Keep writing (one row every half second) until the sink fails: re-authentication
    # with the old password happens within seconds of the change.
    n, deadline, row = 10, time.time() + 120, None
    while row is None:
        assert time.time() < deadline, "the sink never failed on the refused password"
        n += 1
        db.execute("INSERT INTO ks_items VALUES (%s, 'b')", (n,))
        time.sleep(0.5)
        row = db.execute("SELECT state, last_error FROM sink.status WHERE name = 'ks_rotate' AND state = 'failed'").fetchone()
    assert "refused the connection" in row[1] and "authentication" in row[1].lower(), row
    db.execute("SELECT sink.alter_secret('ks_rotate_pw', 'rotate-2')")
    db.execute("SELECT sink.resume_sink('ks_rotate')")
    wait_caught_up(db, "ks_rotate")
    ids = [json.loads(k)["id"] for _, k, _, _ in read_topic("ks-rotate")]
    assert sorted(ids) == list(range(1, n + 1)), "each row exactly once"


def _created(db, name, opts):
    try:
        db.execute("SELECT sink.create_sink(%s, 'ks_items', 'kafka', %s::jsonb, envelope => 'upsert', snapshot => false)", (name, json.dumps(opts)))
        return True
    except Exception:
        return False


def test_tls_verifies_the_broker_against_the_given_ca(db, broker, items):
    db.execute("SELECT sink.create_connection('ks_tls', 'kafka', %s::jsonb)", (json.dumps({
        "brokers": SSL, "security_protocol": "SSL", "ssl_certificate_authority": pem("ca.pem")}),))
    delivers(db, "ks_tls", "ks_tls", "ks-tls")
    _, detail, hint = refused(db, {"brokers": SSL, "security_protocol": "SSL", "ssl_certificate_authority": pem("other-ca.pem")}, "ssl")
    assert "ssl_certificate_authority" in hint
    # Without a CA, the system's trust store does not know the test CA either.
    refused(db, {"brokers": SSL, "security_protocol": "SSL"}, "ssl")


def test_mutual_tls_with_the_client_key_from_a_secret(db, broker, items):
    db.execute("SELECT sink.create_secret('ks_client_key', %s)", (pem("client.key"),))
    db.execute("SELECT sink.create_connection('ks_mtls', 'kafka', %s::jsonb)", (json.dumps({
        "brokers": MTLS, "security_protocol": "SSL", "ssl_certificate_authority": pem("ca.pem"),
        "ssl_certificate": pem("client.pem"), "ssl_key": {"secret": "ks_client_key"}}),))
    assert "PRIVATE KEY" not in one(db, "SELECT options::text FROM sink.connections WHERE name = 'ks_mtls'")
    delivers(db, "ks_mtls", "ks_mtls", "ks-mtls")
    # No client certificate, or one signed by a CA the broker does not trust.
    refused(db, {"brokers": MTLS, "security_protocol": "SSL", "ssl_certificate_authority": pem("ca.pem")}, "ssl")
    refused(db, {"brokers": MTLS, "security_protocol": "SSL", "ssl_certificate_authority": pem("ca.pem"),
                 "ssl_certificate": pem("other-client.pem"), "ssl_key": pem("other-client.key")}, "ssl")


def test_sasl_over_tls(db, broker, items):
    db.execute("SELECT sink.create_secret('ks_pw_ssl', 'sink512-secret')")
    db.execute("SELECT sink.create_connection('ks_sasl_ssl', 'kafka', %s::jsonb)", (json.dumps({
        "brokers": SASL_SSL, "security_protocol": "SASL_SSL", "sasl_mechanisms": "SCRAM-SHA-512", "sasl_username": "sink512",
        "sasl_password": {"secret": "ks_pw_ssl"}, "ssl_certificate_authority": pem("ca.pem")}),))
    delivers(db, "ks_sasl_ssl", "ks_sasl_ssl", "ks-sasl-ssl")
    refused(db, {"brokers": SASL_SSL, "security_protocol": "SASL_SSL", "sasl_mechanisms": "SCRAM-SHA-512", "sasl_username": "sink512",
                 "sasl_password": "wrong", "ssl_certificate_authority": pem("ca.pem")}, "authentication")


def test_a_topic_the_principal_may_not_write_fails_the_sink_permanently(db, broker, items):
    """User `denied` may use the topic until a DENY ACL lands: the next batch fails
    with the authorization error in status and the sink stops (no retry loop); with
    the ACL removed, resume delivers every row once."""
    db.execute("SELECT sink.create_secret('ks_pw_denied', 'denied-secret')")
    db.execute("SELECT sink.create_connection('ks_denied', 'kafka', %s::jsonb)", (json.dumps({
        "brokers": SASL, "security_protocol": "SASL_PLAINTEXT", "sasl_mechanisms": "PLAIN",
        "sasl_username": "denied", "sasl_password": {"secret": "ks_pw_denied"}}),))
    db.execute("SELECT sink.create_sink('ks_acl', 'ks_items', options => '{\"topic\": \"ks-acl\"}', envelope => 'upsert', connection => 'ks_denied', snapshot => false)")
    wait_started(db, "ks_acl")
    db.execute("INSERT INTO ks_items SELECT g, 'a' FROM generate_series(1, 5) g")
    wait_caught_up(db, "ks_acl")
    kafka_cli("acl-deny-topic", "ks-acl", "denied")
    db.execute("INSERT INTO ks_items SELECT g, 'b' FROM generate_series(6, 10) g")
    row = wait_for(lambda: db.execute("SELECT state, last_error, errors FROM sink.status WHERE name = 'ks_acl' AND state = 'failed'").fetchone(),
                   timeout=120, what="the sink to stop on the ACL")
    assert "TopicAuthorizationFailed" in row[1] or "authoriz" in row[1].lower(), row
    assert len(read_topic("ks-acl")) == 5, "nothing of the refused batch is visible"
    kafka_cli("acls", "--remove", "--force", "--deny-principal", "User:denied", "--operation", "All", "--topic", "ks-acl")
    db.execute("SELECT sink.resume_sink('ks_acl')")
    wait_caught_up(db, "ks_acl")
    assert sorted(json.loads(k)["id"] for _, k, _, _ in read_topic("ks-acl")) == list(range(1, 11))
