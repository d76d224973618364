use super::*;

fn one(sql: &str) -> Statement {
    let mut v = parse(sql).unwrap_or_else(|e| panic!("{sql}\n→ {e:?}"));
    assert_eq!(v.len(), 1);
    v.remove(0)
}

fn err(sql: &str) -> ParseError {
    parse(sql).expect_err(sql)
}

fn t(s: &str) -> Value {
    Value::Text(s.into())
}

fn opts(pairs: &[(&str, Value)]) -> Options {
    pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
}

#[test]
fn materialize_topic_configuration_example() {
    let s = one("CREATE SINK custom_topic_sink
  IN CLUSTER my_io_cluster
  FROM orders
  INTO KAFKA CONNECTION kafka_connection (
    TOPIC 'test_avro_topic',
    TOPIC PARTITION COUNT 4,
    TOPIC REPLICATION FACTOR 2,
    TOPIC CONFIG MAP['cleanup.policy' => 'compact']
  )
  FORMAT AVRO USING CONFLUENT SCHEMA REGISTRY CONNECTION csr_connection
  ENVELOPE UPSERT;");
    assert_eq!(s.dialect, Dialect::Materialize);
    assert_eq!(s.notices.len(), 1);
    assert_eq!(
        s.command,
        Command::CreateSink {
            name: "custom_topic_sink".into(),
            source: "orders".into(),
            connector: Some("kafka".into()),
            connection: Some("kafka_connection".into()),
            key: None,
            options: opts(&[
                ("topic", t("test_avro_topic")),
                ("topic_partition_count", t("4")),
                ("topic_replication_factor", t("2")),
                ("topic_config", Value::Map(vec![("cleanup.policy".into(), "compact".into())])),
                ("csr_connection", t("csr_connection")),
                ("format", t("avro")),
                ("envelope", t("upsert")),
            ]),
            if_not_exists: false,
            or_replace: false,
        }
    );
}

#[test]
fn materialize_docs_key_partitioning_and_trailing_comma() {
    let s = one("CREATE SINK docs_sink
FROM t
INTO KAFKA CONNECTION kafka_connection (TOPIC 'doc-commont-example')
KEY (key)
FORMAT AVRO USING CONFLUENT SCHEMA REGISTRY CONNECTION csr_connection (
    DOC ON TYPE t = 'Top-level comment for container record in both key and value schemas',
    KEY DOC ON COLUMN t.key = 'Comment on column only in key schema',
    VALUE DOC ON COLUMN t.key = 'Comment on column only in value schema'
)
ENVELOPE UPSERT;");
    let Command::CreateSink { key, options, .. } = s.command else { panic!() };
    assert_eq!(key, Some(vec!["key".to_string()]));
    let names: Vec<&str> = options.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(names, ["topic", "csr_connection", "doc_on_type_t", "key_doc_on_column_t.key", "value_doc_on_column_t.key", "format", "envelope"]);

    let s = one("CREATE SINK compatibility_level_sink
  IN CLUSTER my_io_cluster
  FROM t
  INTO KAFKA CONNECTION kafka_connection (
    TOPIC 'test_avro_topic',
  )
  FORMAT AVRO USING CONFLUENT SCHEMA REGISTRY CONNECTION csr_connection (
    KEY COMPATIBILITY LEVEL 'BACKWARD',
    VALUE COMPATIBILITY LEVEL 'BACKWARD_TRANSITIVE'
  )
  ENVELOPE UPSERT;");
    let Command::CreateSink { options, .. } = s.command else { panic!() };
    assert!(options.contains(&("value_compatibility_level".into(), t("BACKWARD_TRANSITIVE"))));

    let s = one("CREATE SINK customer_orders
  FROM orders
  INTO KAFKA CONNECTION kafka_connection (
    TOPIC 'customer-orders',
    -- The partition hash includes only the customer ID
    PARTITION BY = seahash(customer_id::text)
  )
  KEY (customer_id, order_id) NOT ENFORCED
  HEADERS hdrs
  KEY FORMAT TEXT VALUE FORMAT JSON
  ENVELOPE UPSERT
  WITH (SNAPSHOT = false)");
    let Command::CreateSink { key, options, .. } = s.command else { panic!() };
    assert_eq!(key, Some(vec!["customer_id".to_string(), "order_id".to_string()]));
    assert_eq!(
        options,
        opts(&[
            ("topic", t("customer-orders")),
            ("partition_by", t("sink.seahash(customer_id::text)")),
            ("key_not_enforced", t("true")),
            ("headers", t("hdrs")),
            ("key_format", t("text")),
            ("value_format", t("json")),
            ("envelope", t("upsert")),
            ("snapshot", t("false")),
        ])
    );
    let s = one("CREATE SINK s FROM t INTO KAFKA CONNECTION k (TOPIC 't', PARTITION BY = kafka_murmur2(name || address), COMPRESSION TYPE = gzip)");
    let Command::CreateSink { options, .. } = s.command else { panic!() };
    assert_eq!(options[1], ("partition_by".into(), t("sink.kafka_murmur2(name || address)")));
    assert_eq!(options[2], ("compression_type".into(), t("gzip")));
}

#[test]
fn materialize_connections_and_secrets() {
    let v = parse(
        "CREATE SECRET kafka_ssl_key AS '<BROKER_SSL_KEY>';
CREATE SECRET IF NOT EXISTS csr_username AS '<CSR_USERNAME>';
CREATE CONNECTION kafka_connection TO KAFKA (
    BROKER 'unique-jellyfish-0000.us-east-1.aws.confluent.cloud:9092',
    SASL MECHANISMS = 'SCRAM-SHA-256',
    SASL USERNAME = 'foo',
    SASL PASSWORD = SECRET kafka_password
);
CREATE CONNECTION csr_basic_http
  FOR CONFLUENT SCHEMA REGISTRY
  URL '<CONFLUENT_REGISTRY_URL>',
  USERNAME = SECRET csr_username,
  PASSWORD = SECRET csr_password;
CREATE CONNECTION k2 TO KAFKA (BROKERS ('a:1', 'b:2')) WITH (VALIDATE = false)",
    )
    .unwrap();
    assert_eq!(v.len(), 5);
    assert_eq!(
        v[0].command,
        Command::CreateSecret { name: "kafka_ssl_key".into(), value: "<BROKER_SSL_KEY>".into(), if_not_exists: false, or_replace: false }
    );
    assert!(matches!(&v[1].command, Command::CreateSecret { if_not_exists: true, .. }));
    assert_eq!(
        v[2].command,
        Command::CreateConnection {
            name: "kafka_connection".into(),
            connector: "kafka".into(),
            options: opts(&[
                ("broker", t("unique-jellyfish-0000.us-east-1.aws.confluent.cloud:9092")),
                ("sasl_mechanisms", t("SCRAM-SHA-256")),
                ("sasl_username", t("foo")),
                ("sasl_password", Value::Secret("kafka_password".into())),
            ]),
            if_not_exists: false,
            or_replace: false,
        }
    );
    let Command::CreateConnection { connector, options, .. } = &v[3].command else { panic!() };
    assert_eq!(connector, "confluent_schema_registry");
    assert_eq!(
        options,
        &opts(&[
            ("url", t("<CONFLUENT_REGISTRY_URL>")),
            ("username", Value::Secret("csr_username".into())),
            ("password", Value::Secret("csr_password".into()))
        ])
    );
    let Command::CreateConnection { options, .. } = &v[4].command else { panic!() };
    assert_eq!(options, &opts(&[("brokers", t("a:1,b:2")), ("validate", t("false"))]));
}

#[test]
fn risingwave_examples() {
    let s = one("CREATE SINK s1 FROM t WITH (
 connector = 'kinesis',
 stream = 'kinesis-sink-demo',
 aws.region = 'us-east-1',
 aws.credentials.access_key_id = 'your_access_key',
 aws.credentials.secret_access_key = 'your_secret_key',
 type = 'debezium');");
    assert_eq!(s.dialect, Dialect::RisingWave);
    let Command::CreateSink { connector, options, source, .. } = s.command else { panic!() };
    assert_eq!((connector.as_deref(), source.as_str()), (Some("kinesis"), "t"));
    assert_eq!(options[1], ("aws.region".into(), t("us-east-1")));
    assert_eq!(options[4], ("type".into(), t("debezium")));

    let s = one("CREATE SINK IF NOT EXISTS n AS SELECT id, v FROM public.t WHERE id > 3
WITH (
   connector='nats',
   server_url='127.0.0.1:4222',
   subject='s',
   connect_mode='user_and_password',
   username='u',
   password='p',
   jwt=`j`
)
FORMAT UPSERT ENCODE AVRO (schema.registry = 'http://r:8081', force_append_only = 'false') KEY ENCODE TEXT;");
    let Command::CreateSink { source, options, if_not_exists, .. } = s.command else { panic!() };
    assert!(if_not_exists);
    assert_eq!(source, "SELECT id, v FROM public.t WHERE id > 3");
    let tail: Vec<(String, Value)> = options[5..].to_vec();
    assert_eq!(
        tail,
        opts(&[
            ("jwt", t("j")),
            ("envelope", t("upsert")),
            ("value_format", t("avro")),
            ("schema.registry", t("http://r:8081")),
            ("force_append_only", t("false")),
            ("key_format", t("text")),
        ])
    );
    let s =
        one("CREATE SINK s FROM t WITH (connector = 's3', s3.bucket_name = 'b', s3.path = 'x/y/', s3.region_name = 'r') FORMAT PLAIN ENCODE JSON");
    let Command::CreateSink { options, .. } = s.command else { panic!() };
    assert!(options.contains(&("location".into(), t("s3://b/x/y"))));
    assert!(options.contains(&("envelope".into(), t("append-only"))));
    let s = one("CREATE SECRET pw WITH (backend = 'meta') AS 'x'");
    assert_eq!(s.dialect, Dialect::RisingWave);
    let s = one("CREATE CONNECTION kc WITH (type = 'kafka', properties.bootstrap.server = 'h:9092')");
    assert!(matches!(s.command, Command::CreateConnection { ref connector, .. } if connector == "kafka"));
}

#[test]
fn kinetica_examples() {
    let v = parse(
        "CREATE CREDENTIAL kafka_credential TYPE = 'kafka', IDENTITY = 'u', SECRET = 'p' WITH OPTIONS ('security.protocol' = 'SASL_PLAINTEXT');
  CREATE DATA SINK kin_dsink
  LOCATION = 'kafka://kafka.abc.com:9092'
  WITH OPTIONS
  (
      CREDENTIAL = 'kafka_credential',
      KAFKA_TOPIC_NAME = 'kafka_topic'
  );
  CREATE DATA SINK kin_dsink_local
  LOCATION = 'table://example.ds_employee_backup';
  CREATE STREAM example.s ON TABLE example.emp WHERE dept = 'x' WITH OPTIONS (DATASINK_NAME = 'kin_dsink', TYPE = 'upsert');
  ALTER DATA SINK kin_dsink SET PROPERTY KAFKA_TOPIC_NAME = 't2', SKIP_VALIDATION = 'true';
  GRANT CONNECT ON DATA SINK kin_dsink TO auser, buser;
  SHOW DATA SINK *; SHOW CREDENTIAL kafka_credential; DROP STREAM IF EXISTS example.s",
    )
    .unwrap();
    assert_eq!(v.len(), 9);
    assert!(v.iter().all(|s| s.dialect == Dialect::Kinetica));
    let Command::CreateCredential { kind, identity, secret, options, .. } = &v[0].command else { panic!() };
    assert_eq!((kind.as_str(), identity.as_deref(), secret.as_deref()), ("kafka", Some("u"), Some("p")));
    assert_eq!(options.len(), 1);
    assert_eq!(
        v[1].command,
        Command::CreateConnection {
            name: "kin_dsink".into(),
            connector: "kafka".into(),
            options: opts(&[
                ("location", t("kafka://kafka.abc.com:9092")),
                ("credential", t("kafka_credential")),
                ("kafka_topic_name", t("kafka_topic"))
            ]),
            if_not_exists: false,
            or_replace: false,
        }
    );
    assert!(matches!(&v[2].command, Command::CreateConnection { connector, .. } if connector == "table"));
    let Command::CreateSink { name, source, connection, options, .. } = &v[3].command else { panic!() };
    assert_eq!(
        (name.as_str(), source.as_str(), connection.as_deref()),
        ("example.s", "SELECT * FROM example.emp WHERE dept = 'x'", Some("kin_dsink"))
    );
    assert_eq!(options, &opts(&[("type", t("upsert"))]));
    assert_eq!(
        v[4].command,
        Command::AlterConnection { name: "kin_dsink".into(), set: opts(&[("kafka_topic_name", t("t2")), ("validate", t("false"))]) }
    );
    assert_eq!(
        v[5].command,
        Command::Grant { revoke: false, kind: ObjectKind::Connection, name: "kin_dsink".into(), roles: vec!["auser".into(), "buser".into()] }
    );
    assert_eq!(v[6].command, Command::Show { kind: Some(ObjectKind::Connection), name: None });
    assert_eq!(v[8].command, Command::Drop { kind: ObjectKind::Sink, name: "example.s".into(), if_exists: true, cascade: false });
    for (loc, c) in
        [("s3", "s3"), ("azure://h", "azblob"), ("gcs", "gcs"), ("https://h:1/p", "webhook"), ("jdbc:mysql://h/db", "jdbc"), ("file:///x", "file")]
    {
        assert_eq!(kinetica::connector_for(loc), Ok(c));
    }
}

#[test]
fn quoting_drop_show_grant() {
    let s = one(r#"CREATE SINK "My ""Sink""" FROM "Odd Schema"."T" WITH (connector = 'file', path = 'it''s')"#);
    let Command::CreateSink { name, source, options, .. } = s.command else { panic!() };
    assert_eq!((name.as_str(), source.as_str()), ("My \"Sink\"", "\"Odd Schema\".\"T\""));
    assert_eq!(options, opts(&[("path", t("it's"))]));
    assert_eq!(
        one("drop connection if exists c cascade").command,
        Command::Drop { kind: ObjectKind::Connection, name: "c".into(), if_exists: true, cascade: true }
    );
    assert_eq!(
        one("REVOKE USAGE ON SECRET s FROM bob").command,
        Command::Grant { revoke: true, kind: ObjectKind::Secret, name: "s".into(), roles: vec!["bob".into()] }
    );
    assert_eq!(one("SHOW SINKS").command, Command::Show { kind: Some(ObjectKind::Sink), name: None });
    assert_eq!(
        qualify_hash_functions("crc32(a) + sink.crc32(b) + x.seahash(c) + \"seahash\"(d)"),
        "sink.crc32(a) + sink.crc32(b) + x.seahash(c) + \"seahash\"(d)"
    );
}

#[test]
fn syntax_errors_point_at_the_token_and_say_what_was_expected() {
    let sql = "CREATE SINK s FROM t INTO KAFKA CONNECTION k (TOPIC 't') ENVELOPE SIDEWAYS";
    let e = err(sql);
    assert_eq!(e.message, "syntax error at or near \"SIDEWAYS\"");
    assert_eq!(e.position, sql.find("SIDEWAYS").unwrap() + 1);
    assert_eq!(e.expected, ["DEBEZIUM", "UPSERT"]);
    assert!(e.detail().contains("Expected one of: DEBEZIUM, UPSERT. At position 67 (line 1, column 67)."), "{}", e.detail());

    let sql = "CREATE SINK s\nFROM t WITH (connector 'kafka')";
    let e = err(sql);
    assert_eq!((e.line, e.column, e.expected.as_slice()), (2, 24, &["\"=\"".to_string()][..]));

    let e = err("CREATE SINK s FROM t INTO KAFKA CONNECTION k (TOPIC 't'");
    assert_eq!(e.message, "syntax error at end of input");
    let e = err("CREATE SINK s FROM t INTO KAFKA CONNECTION k (COMPRESSION TYPE 'gzip')");
    assert!(e.message.contains("missing TOPIC"));
    let e = err("CREATE SINK s FROM t WITH (topic = 'x')");
    assert!(e.message.contains("missing connector"));
    assert_eq!(err("CREATE SINK s FROM t WITH (connector = 'clickhouse')").kind, ErrorKind::Unsupported);
    assert_eq!(err("CREATE SINK s FROM t WITH (connector = 'kafka') FORMAT PLAIN ENCODE PROTOBUF").kind, ErrorKind::Unsupported);
    assert!(matches!(&one("CREATE DATA SINK d LOCATION = 'hdfs://h:9000'").command, Command::CreateConnection { connector, .. } if connector == "hdfs"));
    assert_eq!(err("CREATE DATA SINK d LOCATION = 'gopher://h'").kind, ErrorKind::Syntax);
    assert!(err("CREATE STREAM s ON t WITH OPTIONS (TYPE = 'upsert')").message.contains("DATASINK_NAME"));
    assert!(err("CREATE SINK s FROM t INTO KAFKA CONNECTION k (TOPIC 't') FORMAT AVRO").message.contains("end of input"));
    assert_eq!(err("CREATE SINK s FROM t INTO KAFKA CONNECTION k (TOPIC 't') KEY FORMAT JSON").expected, ["VALUE"]);
    assert_eq!(
        err("CREATE SINK s FROM t INTO KAFKA CONNECTION k (TOPIC 't') ENVELOPE UPSERT garbage").message,
        "syntax error at or near \"garbage\""
    );
    assert_eq!(err("   ;  ; ").message, "empty statement");
    assert_eq!(err("SELECT 1").expected[0], "CREATE");
    assert!(err("CREATE SECRET s AS 'x").message.contains("unterminated"));
    assert!(err("CREATE SINK s FROM t INTO KAFKA CONNECTION k (TOPIC 't', PARTITION BY = f((x)").message.contains("end of input"));
    assert!(err("CREATE CREDENTIAL c IDENTITY = 'x'").expected[0].starts_with("TYPE"));
    // The second statement's error points into the second statement.
    let sql = "CREATE SECRET a AS 'x'; CREATE SECRET b AS y";
    assert_eq!(err(sql).position, sql.rfind('y').unwrap() + 1);
}

#[test]
fn kinetica_export_of_a_table_or_a_query_into_a_data_sink() {
    let s = one("EXPORT QUERY (SELECT id, (a + 1) AS b FROM t WHERE f(x) > 0) INTO FILE PATH 'orders_2024' FORMAT PARQUET WITH OPTIONS (DATA SINK NAME = 'files', envelope = 'append-only')");
    assert_eq!((s.dialect, s.tag.as_str()), (Dialect::Kinetica, "EXPORT"));
    assert_eq!(
        s.command,
        Command::Export {
            query: "SELECT id, (a + 1) AS b FROM t WHERE f(x) > 0".into(),
            connection: "files".into(),
            name: Some("orders_2024".into()),
            options: vec![("file_format".into(), t("parquet")), ("envelope".into(), t("append-only"))],
        }
    );
    let s = one("export table example.emp into remote table 'emp_copy' with options (datasink_name = 'pg')");
    assert_eq!(
        s.command,
        Command::Export { query: "SELECT * FROM example.emp".into(), connection: "pg".into(), name: None, options: vec![("table.name".into(), t("emp_copy"))] }
    );
    assert!(err("EXPORT TABLE t INTO FILE PATH '../etc' WITH OPTIONS (DATA SINK NAME = 'f')").message.contains("invalid FILE PATH"));
    assert!(err("EXPORT TABLE t INTO FILE PATH 'x' WITH OPTIONS (FOO = 'f')").message.contains("DATA SINK NAME"));
    assert_eq!(err("EXPORT TABLE t INTO REMOTE QUERY 'INSERT ..' WITH OPTIONS (DATA SINK NAME = 'f')").kind, ErrorKind::Unsupported);
    assert!(err("EXPORT VIEW v INTO FILE PATH 'x' WITH OPTIONS (DATA SINK NAME = 'f')").expected.iter().any(|e| e == "QUERY"));
}
