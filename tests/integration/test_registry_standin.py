"""Self-tests of scripts/registry.py, the stand-in for a Confluent Schema Registry
(no real registry can be installed here). Started by scripts/registry.sh on
127.0.0.1:18082 with basic auth, stopped at the end; no PostgreSQL involved.
Every start is a fresh, empty registry, so the first schema registered gets id 1."""
import base64
import json
import os
import subprocess
import urllib.error
import urllib.request

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PORT = 18082
BASE = f"http://127.0.0.1:{PORT}"
USER, PASSWORD = "sr-user", "sr-secret"
RENV = dict(os.environ, REGISTRY_PORT=str(PORT), REGISTRY_DATA="/tmp/pg_sink_registry_selftest",
            REGISTRY_USER=USER, REGISTRY_PASSWORD=PASSWORD)
CT = "application/vnd.schemaregistry.v1+json"


def registry_sh(cmd):
    subprocess.run([os.path.join(ROOT, "scripts", "registry.sh"), cmd], env=RENV, check=True)


@pytest.fixture(scope="module", autouse=True)
def registry():
    registry_sh("stop")  # a registry kept from an earlier run would not be empty
    registry_sh("start")
    yield
    if not os.environ.get("PGSINK_KEEP_SERVERS"):
        registry_sh("stop")


def call(method, path, body=None, auth=(USER, PASSWORD), ctype=CT):
    """(status, decoded JSON body, content type) of one request."""
    data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    req = urllib.request.Request(BASE + path, data=data, method=method)
    if data is not None and ctype:
        req.add_header("Content-Type", ctype)
    if auth:
        req.add_header("Authorization", "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read()), resp.headers.get("Content-Type")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read()), e.headers.get("Content-Type")


def req(method, path, body=None, **kw):
    status, out, _ = call(method, path, body, **kw)
    return status, out


def record(name, *fields, namespace=None):
    s = {"type": "record", "name": name, "fields": list(fields)}
    if namespace:
        s["namespace"] = namespace
    return s


def register(subject, schema, **extra):
    return req("POST", f"/subjects/{subject}/versions", {"schema": json.dumps(schema), **extra})


def set_level(subject, level):
    assert req("PUT", f"/config/{subject}", {"compatibility": level}) == (200, {"compatibility": level})


A = {"name": "a", "type": "int"}
B_REQ = {"name": "b", "type": "string"}
B_DEF = {"name": "b", "type": "string", "default": "x"}
NOTE_NULL = {"name": "note", "type": ["null", "string"], "default": None}


def test_register_same_schema_same_id_no_new_version():
    # First registration in this fresh registry: id 1 (keep this test first in the file).
    assert register("selftest-a-value", record("A", A)) == (200, {"id": 1})
    assert register("selftest-a-value", record("A", A)) == (200, {"id": 1})
    assert req("GET", "/subjects/selftest-a-value/versions") == (200, [1])
    # Same schema, differently spelled (key order, whitespace): the same id, no new version.
    respelled = '{ "fields": [ {"type": "int", "name": "a"} ], "name": "A", "type": "record" }'
    assert req("POST", "/subjects/selftest-a-value/versions", {"schema": respelled, "schemaType": "AVRO"}) == (200, {"id": 1})
    assert req("GET", "/subjects/selftest-a-value/versions") == (200, [1])


def test_requires_basic_auth():
    status, out, ctype = call("GET", "/subjects", auth=None)
    assert (status, out, ctype) == (401, {"error_code": 401, "message": "Unauthorized"}, CT)
    assert req("GET", "/subjects", auth=(USER, "wrong")) == (401, {"error_code": 401, "message": "Unauthorized"})
    assert req("POST", "/subjects/selftest-noauth/versions", {"schema": '"int"'}, auth=None)[0] == 401
    status, out, ctype = call("GET", "/subjects")
    assert (status, ctype) == (200, CT)
    assert "selftest-noauth" not in out


def test_same_schema_other_subject_same_id():
    _, first = register("selftest-b1-value", record("B", A, B_REQ))
    assert first["id"] > 1
    assert register("selftest-b2-value", record("B", A, B_REQ)) == (200, {"id": first["id"]})
    assert req("GET", "/subjects/selftest-b2-value/versions/latest")[1]["version"] == 1
    assert req("GET", f"/schemas/ids/{first['id']}/versions") == (
        200, [{"subject": "selftest-b1-value", "version": 1}, {"subject": "selftest-b2-value", "version": 1}])


def test_backward_add_nullable_field():
    s = "selftest-nullable-value"
    _, v1 = register(s, record("N", A))
    status, v2 = register(s, record("N", A, NOTE_NULL))
    assert status == 200 and v2["id"] == v1["id"] + 1
    assert req("GET", f"/subjects/{s}/versions") == (200, [1, 2])
    status, latest = req("GET", f"/subjects/{s}/versions/latest")
    assert (status, latest["version"], latest["id"], latest["subject"]) == (200, 2, v2["id"], s)
    assert json.loads(latest["schema"]) == record("N", A, NOTE_NULL)


def test_backward_required_field_refused_until_none():
    s = "selftest-required-value"
    _, v1 = register(s, record("R", A))
    status, err = register(s, record("R", A, B_REQ))
    assert status == 409 and err["error_code"] == 409
    assert err["message"].startswith(
        f'Schema being registered is incompatible with an earlier schema for subject "{s}"')
    assert "READER_FIELD_MISSING_DEFAULT_VALUE" in err["message"] and "'b'" in err["message"]
    assert "compatibility: 'BACKWARD'" in err["message"]
    assert req("GET", f"/subjects/{s}/versions") == (200, [1])
    set_level(s, "NONE")
    status, v2 = register(s, record("R", A, B_REQ))
    assert status == 200 and v2["id"] > v1["id"]
    assert req("GET", f"/subjects/{s}/versions") == (200, [1, 2])
    assert req("GET", f"/config/{s}") == (200, {"compatibilityLevel": "NONE"})
    assert req("GET", "/config") == (200, {"compatibilityLevel": "BACKWARD"})


def test_forward():
    # FORWARD: the latest schema must read data written with the new one.
    s = "selftest-forward-value"
    set_level(s, "FORWARD")
    assert register(s, record("F", A, B_REQ))[0] == 200
    status, err = register(s, record("F", A))  # the old reader needs b, which has no default
    assert (status, err["error_code"]) == (409, 409)
    assert "READER_FIELD_MISSING_DEFAULT_VALUE" in err["message"] and "'b'" in err["message"]
    status, _ = register(s, record("F", A, B_REQ, {"name": "c", "type": "long"}))  # old readers skip c
    assert status == 200
    assert req("GET", f"/subjects/{s}/versions") == (200, [1, 2])

    s = "selftest-forward-default-value"
    set_level(s, "FORWARD")
    assert register(s, record("F", A, B_DEF))[0] == 200
    assert register(s, record("F", A))[0] == 200  # the old reader fills b from its default
    assert req("GET", f"/subjects/{s}/versions") == (200, [1, 2])


def test_full():
    s = "selftest-full-value"
    set_level(s, "FULL")
    assert register(s, record("U", A, B_REQ))[0] == 200
    status, err = register(s, record("U", A))  # removing a field without default
    assert (status, err["error_code"]) == (409, 409)
    status, err = register(s, record("U", A, B_REQ, {"name": "c", "type": "int"}))  # adding one without default
    assert (status, err["error_code"]) == (409, 409)
    assert register(s, record("U", A, B_REQ, {"name": "c", "type": "int", "default": 0}))[0] == 200
    assert req("GET", f"/subjects/{s}/versions") == (200, [1, 2])

    s = "selftest-full-default-value"
    set_level(s, "FULL")
    assert register(s, record("U", A, B_DEF))[0] == 200
    assert register(s, record("U", A))[0] == 200  # removing a field with default
    assert req("GET", f"/subjects/{s}/versions") == (200, [1, 2])


def test_transitive():
    v1, v2, v3 = record("T", A), record("T", A, B_DEF), record("T", A, B_REQ)
    # BACKWARD only compares with the latest version: v3 reads v2 (which has b).
    s = "selftest-trans-value"
    assert [register(s, v)[0] for v in (v1, v2, v3)] == [200, 200, 200]
    # BACKWARD_TRANSITIVE also needs v3 to read v1, which lacks b.
    s = "selftest-trans2-value"
    set_level(s, "BACKWARD_TRANSITIVE")
    assert [register(s, v)[0] for v in (v1, v2)] == [200, 200]
    status, err = register(s, v3)
    assert (status, err["error_code"]) == (409, 409)
    assert "oldSchemaVersion: 1" in err["message"] and "BACKWARD_TRANSITIVE" in err["message"]


def test_primitive_promotion():
    s = "selftest-int-long-value"
    _, v1 = register(s, "int")
    assert register(s, "long")[0] == 200  # long reads int
    # A schema already in the subject gets its id back before any compatibility check.
    assert register(s, "int") == (200, {"id": v1["id"]})
    s = "selftest-long-int-value"
    assert register(s, "long")[0] == 200
    status, err = register(s, "int")  # int cannot read long
    assert (status, err["error_code"]) == (409, 409) and "TYPE_MISMATCH" in err["message"]
    assert req("GET", f"/subjects/{s}/versions") == (200, [1])

    s = "selftest-promote-field-value"
    assert register(s, record("P", {"name": "n", "type": "int"}, {"name": "t", "type": "string"}))[0] == 200
    assert register(s, record("P", {"name": "n", "type": "double"}, {"name": "t", "type": "bytes"}))[0] == 200
    status, err = register(s, record("P", {"name": "n", "type": "float"}, {"name": "t", "type": "bytes"}))
    assert (status, err["error_code"]) == (409, 409)  # float cannot read double
    assert "/fields/0/type" in err["message"]
    # Logical types count as their underlying type.
    s = "selftest-logical-value"
    assert register(s, {"type": "int", "logicalType": "date"})[0] == 200
    assert register(s, {"type": "long", "logicalType": "timestamp-micros"})[0] == 200


def test_union_widening_and_narrowing():
    s = "selftest-union-value"
    assert register(s, record("W", {"name": "v", "type": "int"}))[0] == 200
    assert register(s, record("W", {"name": "v", "type": ["null", "int"], "default": None}))[0] == 200
    assert register(s, record("W", {"name": "v", "type": ["null", "int", "string"], "default": None}))[0] == 200
    # Narrowing (a "doc" keeps these from being the earlier versions themselves, which would
    # just get their ids back): the string branch of the latest version cannot be read.
    status, err = register(s, record("W", {"name": "v", "type": ["null", "int"], "default": None, "doc": "narrow"}))
    assert (status, err["error_code"]) == (409, 409) and "MISSING_UNION_BRANCH" in err["message"]
    status, err = register(s, record("W", {"name": "v", "type": "int", "doc": "narrow"}))
    assert (status, err["error_code"]) == (409, 409) and "TYPE_MISMATCH" in err["message"]
    assert req("GET", f"/subjects/{s}/versions") == (200, [1, 2, 3])


def test_enum_symbols():
    def enum(*symbols, default=None):
        e = {"type": "enum", "name": "Color", "symbols": list(symbols)}
        if default:
            e["default"] = default
        return record("E", {"name": "c", "type": e})

    s = "selftest-enum-value"
    assert register(s, enum("RED", "GREEN"))[0] == 200
    assert register(s, enum("RED", "GREEN", "BLUE"))[0] == 200  # more symbols read fewer
    status, err = register(s, enum("RED", "GREEN", "YELLOW"))  # cannot read BLUE
    assert (status, err["error_code"]) == (409, 409) and "MISSING_ENUM_SYMBOLS" in err["message"]
    assert register(s, enum("RED", "GREEN", "OTHER", default="OTHER"))[0] == 200


def test_named_references_and_namespaces():
    addr = {"type": "record", "name": "Address", "namespace": "com.example", "fields": [{"name": "city", "type": "string"}]}
    person = {"type": "record", "name": "Person", "namespace": "com.example", "fields": [
        {"name": "home", "type": addr},
        {"name": "work", "type": ["null", "Address"], "default": None},           # same namespace, short name
        {"name": "old", "type": ["null", "com.example.Address"], "default": None},  # fullname
    ]}
    s = "selftest-named-value"
    assert register(s, person)[0] == 200
    # Changing the referenced type changes every use of it: city becomes required-missing.
    addr2 = dict(addr, fields=[{"name": "zip", "type": "string"}])
    status, err = register(s, dict(person, fields=[dict(person["fields"][0], type=addr2)] + person["fields"][1:]))
    assert (status, err["error_code"]) == (409, 409) and "'zip'" in err["message"]
    # An unresolvable name is an invalid schema.
    status, err = register("selftest-unresolved-value", record("X", {"name": "y", "type": "com.example.Nope"}))
    assert (status, err["error_code"]) == (422, 42201) and err["message"].startswith("Invalid schema")
    # Recursive types work and their compatibility check terminates.
    node = record("Node", {"name": "v", "type": "int"}, {"name": "next", "type": ["null", "Node"], "default": None})
    s = "selftest-recursive-value"
    assert register(s, node)[0] == 200
    node2 = record("Node", {"name": "v", "type": "long"}, {"name": "next", "type": ["null", "Node"], "default": None})
    assert register(s, node2)[0] == 200
    assert req("GET", f"/subjects/{s}/versions") == (200, [1, 2])


def test_get_by_id_lookup_versions_latest():
    s = "selftest-get-value"
    _, v1 = register(s, record("G", A))
    _, v2 = register(s, record("G", A, NOTE_NULL))
    status, out = req("GET", f"/schemas/ids/{v1['id']}")
    assert status == 200 and json.loads(out["schema"]) == record("G", A)
    assert req("GET", "/schemas/ids/9999") == (404, {"error_code": 40403, "message": "Schema 9999 not found"})
    # lookup
    status, out = req("POST", f"/subjects/{s}", {"schema": json.dumps(record("G", A))})
    assert status == 200
    assert (out["subject"], out["id"], out["version"], json.loads(out["schema"])) == (s, v1["id"], 1, record("G", A))
    status, err = req("POST", f"/subjects/{s}", {"schema": json.dumps(record("G", B_REQ))})
    assert (status, err["error_code"]) == (404, 40403)
    status, err = req("POST", "/subjects/selftest-nope-value", {"schema": json.dumps(record("G", A))})
    assert (status, err["error_code"]) == (404, 40401)
    # versions
    assert req("GET", f"/subjects/{s}/versions") == (200, [1, 2])
    for v in ("2", "latest", "-1"):
        status, out = req("GET", f"/subjects/{s}/versions/{v}")
        assert (status, out["subject"], out["version"], out["id"]) == (200, s, 2, v2["id"])
    status, out = req("GET", f"/subjects/{s}/versions/1")
    assert (status, out["version"], out["id"]) == (200, 1, v1["id"])
    assert req("GET", f"/subjects/{s}/versions/1/schema") == (200, record("G", A))
    status, err = req("GET", f"/subjects/{s}/versions/7")
    assert (status, err["error_code"]) == (404, 40402)
    status, err = req("GET", f"/subjects/{s}/versions/abc")
    assert (status, err["error_code"]) == (422, 42202)
    for path in ("/subjects/selftest-nope-value/versions", "/subjects/selftest-nope-value/versions/1",
                 "/subjects/selftest-nope-value/versions/latest"):
        status, err = req("GET", path)
        assert (status, err["error_code"]) == (404, 40401), path
    status, subjects = req("GET", "/subjects")
    assert status == 200 and s in subjects and "selftest-nope-value" not in subjects


def test_config_endpoints():
    s = "selftest-config-value"
    assert req("GET", "/config") == (200, {"compatibilityLevel": "BACKWARD"})
    status, err = req("GET", f"/config/{s}")
    assert (status, err["error_code"]) == (404, 40408)
    assert req("GET", f"/config/{s}?defaultToGlobal=true") == (200, {"compatibilityLevel": "BACKWARD"})
    set_level(s, "FULL_TRANSITIVE")
    assert req("GET", f"/config/{s}") == (200, {"compatibilityLevel": "FULL_TRANSITIVE"})
    assert req("GET", f"/config/{s}?defaultToGlobal=true") == (200, {"compatibilityLevel": "FULL_TRANSITIVE"})
    try:
        assert req("PUT", "/config", {"compatibility": "FORWARD"}) == (200, {"compatibility": "FORWARD"})
        assert req("GET", "/config") == (200, {"compatibilityLevel": "FORWARD"})
        assert req("GET", "/config/selftest-other-value?defaultToGlobal=true") == (200, {"compatibilityLevel": "FORWARD"})
        # The global level applies to subjects without their own: FORWARD lets a required field be added.
        assert register("selftest-global-value", record("Q", A))[0] == 200
        assert register("selftest-global-value", record("Q", A, B_REQ))[0] == 200
    finally:
        assert req("PUT", "/config", {"compatibility": "BACKWARD"}) == (200, {"compatibility": "BACKWARD"})
    assert req("GET", f"/config/{s}") == (200, {"compatibilityLevel": "FULL_TRANSITIVE"})
    assert req("DELETE", f"/config/{s}") == (200, {"compatibility": "FULL_TRANSITIVE"})
    assert req("GET", f"/config/{s}")[1]["error_code"] == 40408
    for path in ("/config", f"/config/{s}"):
        status, err = req("PUT", path, {"compatibility": "SIDEWAYS"})
        assert (status, err["error_code"]) == (422, 42203), path
    assert req("GET", "/config") == (200, {"compatibilityLevel": "BACKWARD"})


def test_invalid_schemas():
    s = "selftest-invalid-value"
    for bad in ("{not json", '{"type": "recrd", "name": "X"}', '{"type": "record", "name": "X"}',
                '{"type": "record", "name": "X", "fields": [{"name": "a", "type": "int", "default": "x"}]}',
                '{"type": "record", "name": "X", "fields": [{"name": "a", "type": "int"}, {"name": "a", "type": "long"}]}',
                '{"type": "enum", "name": "E", "symbols": ["A", "A"]}', '["int", "int"]'):
        status, err = req("POST", f"/subjects/{s}/versions", {"schema": bad})
        assert (status, err["error_code"]) == (422, 42201), bad
        assert err["message"].startswith("Invalid schema"), bad
    status, err = req("POST", f"/subjects/{s}/versions", {"schema": 'syntax = "proto3";', "schemaType": "PROTOBUF"})
    assert (status, err["error_code"]) == (422, 42201)
    status, err = req("POST", f"/subjects/{s}/versions", {"schemaType": "AVRO"})
    assert (status, err["error_code"]) == (422, 42201)
    status, err = req("GET", f"/subjects/{s}/versions")
    assert (status, err["error_code"]) == (404, 40401)


def test_body_content_types():
    body = {"schema": json.dumps(record("C", A))}
    ids = set()
    for ctype in ("application/vnd.schemaregistry.v1+json", "application/vnd.schemaregistry+json",
                  "application/json", "application/json; charset=utf-8"):
        status, out = req("POST", "/subjects/selftest-ctype-value/versions", body, ctype=ctype)
        assert status == 200, ctype
        ids.add(out["id"])
    assert len(ids) == 1
    status, err = req("POST", "/subjects/selftest-ctype-value/versions", body, ctype="text/plain")
    assert (status, err["error_code"]) == (415, 415)
    assert req("GET", "/subjects/selftest-ctype-value/versions") == (200, [1])


def test_compatibility_endpoint():
    s = "selftest-compat-value"
    assert register(s, "long")[0] == 200
    path = f"/compatibility/subjects/{s}/versions/latest"
    assert req("POST", path, {"schema": '"double"'}) == (200, {"is_compatible": True})
    assert req("POST", path, {"schema": '"int"'}) == (200, {"is_compatible": False})
    assert req("POST", f"/compatibility/subjects/{s}/versions/1", {"schema": '"int"'}) == (200, {"is_compatible": False})
    status, out = req("POST", path + "?verbose=true", {"schema": '"int"'})
    assert status == 200 and out["is_compatible"] is False and "TYPE_MISMATCH" in out["messages"][0]
    set_level(s, "FORWARD")  # long reads int
    assert req("POST", path, {"schema": '"int"'}) == (200, {"is_compatible": True})
    status, err = req("POST", f"/compatibility/subjects/{s}/versions/5", {"schema": '"int"'})
    assert (status, err["error_code"]) == (404, 40402)
    status, err = req("POST", f"/compatibility/subjects/{s}/versions/latest", {"schema": "{bad"})
    assert (status, err["error_code"]) == (422, 42201)
    assert req("GET", f"/subjects/{s}/versions") == (200, [1])  # checking registers nothing


def test_delete_subject():
    s = "selftest-delete-value"
    _, v1 = register(s, record("D", A))
    assert register(s, record("D", A, NOTE_NULL))[0] == 200
    assert req("DELETE", f"/subjects/{s}") == (200, [1, 2])
    status, err = req("GET", f"/subjects/{s}/versions")
    assert (status, err["error_code"]) == (404, 40401)
    status, err = req("DELETE", f"/subjects/{s}")
    assert (status, err["error_code"]) == (404, 40401)
    assert s not in req("GET", "/subjects")[1]
    # Ids stay valid and are reused for the same schema.
    assert json.loads(req("GET", f"/schemas/ids/{v1['id']}")[1]["schema"]) == record("D", A)
    assert register(s, record("D", A)) == (200, {"id": v1["id"]})
    assert req("GET", f"/subjects/{s}/versions") == (200, [1])


def test_unknown_paths():
    assert req("GET", "/nothing/here") == (404, {"error_code": 404, "message": "HTTP 404 Not Found"})
    status, err = req("DELETE", "/subjects")
    assert (status, err["error_code"]) == (405, 405)
    status, err = req("GET", "/schemas/ids/abc")
    assert (status, err["error_code"]) == (404, 40403)
    assert req("GET", "/schemas/types") == (200, ["AVRO"])
