#!/usr/bin/env python3
"""A STAND-IN for a Confluent Schema Registry, for pg_sink's tests only.

No real schema registry can be installed on this machine (Karapace is not on the
reachable PyPI; Confluent's and Apicurio's registries need Maven), so this small
server speaks the subset of the Confluent Schema Registry REST API that pg_sink
uses, with Confluent's JSON shapes, status codes and error codes. pg_sink's client
side stays generic: pointed at a real registry it works unchanged. State is kept in
memory only (every start is a fresh, empty registry); only AVRO schemas are
supported, and schema references are not.

    python3 scripts/registry.py --host 127.0.0.1 --port 18081 [--user U --password P]

With --user/--password every request needs HTTP Basic auth with them.

Endpoints:
  POST   /subjects/{s}/versions                  register -> {"id"}
  POST   /subjects/{s}                           lookup -> {"subject","id","version","schema"}
  GET    /subjects                               list subjects
  GET    /subjects/{s}/versions                  list versions
  GET    /subjects/{s}/versions/{v|latest|-1}    {"subject","version","id","schema"}
  GET    /subjects/{s}/versions/{v}/schema       the raw schema
  DELETE /subjects/{s}                           deleted versions
  DELETE /subjects/{s}/versions/{v}              deleted version
  GET    /schemas/ids/{id}                       {"schema"}
  GET    /schemas/ids/{id}/versions              [{"subject","version"}]
  GET    /schemas/types                          ["AVRO"]
  GET|PUT        /config                         global compatibility level
  GET|PUT|DELETE /config/{s}                     subject compatibility level
  POST   /compatibility/subjects/{s}/versions[/{v}]   {"is_compatible"}

Compatibility follows Avro schema resolution
(https://avro.apache.org/docs/1.11.1/specification/#schema-resolution).
Each request is logged to stderr as one line: method, path, status.
"""
import argparse
import base64
import binascii
import hmac
import http.server
import json
import re
import sys
import threading
import urllib.parse

import fastavro

CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"
ACCEPTED_BODY_TYPES = {"application/vnd.schemaregistry.v1+json", "application/vnd.schemaregistry+json", "application/json"}
LEVELS = ("BACKWARD", "BACKWARD_TRANSITIVE", "FORWARD", "FORWARD_TRANSITIVE", "FULL", "FULL_TRANSITIVE", "NONE")
DEFAULT_LEVEL = "BACKWARD"

PRIMITIVES = {"null", "boolean", "int", "long", "float", "double", "bytes", "string"}
# writer type -> reader types that can read it (besides itself)
PROMOTIONS = {
    "int": {"long", "float", "double"},
    "long": {"float", "double"},
    "float": {"double"},
    "string": {"bytes"},
    "bytes": {"string"},
}
NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class ApiError(Exception):
    def __init__(self, status, code, message):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def subject_not_found(subject):
    return ApiError(404, 40401, f"Subject '{subject}' not found.")


def version_not_found(version):
    return ApiError(404, 40402, f"Version {version} not found.")


def schema_not_found(sid=None):
    return ApiError(404, 40403, "Schema not found" if sid is None else f"Schema {sid} not found")


def invalid_schema(detail):
    return ApiError(422, 42201, f"Invalid schema {detail}")


def invalid_level():
    return ApiError(422, 42203, "Invalid compatibility level. Valid values are none, backward, forward, full, "
                                "backward_transitive, forward_transitive, and full_transitive")


# ---------------------------------------------------------------------------
# Avro schemas: parsing into a resolved tree, and the reader/writer check.
# ---------------------------------------------------------------------------

class SchemaError(ValueError):
    pass


def _split(name, namespace):
    """(fullname, unqualified name) of a name defined inside `namespace`."""
    if "." in name:
        return name, name.rsplit(".", 1)[1]
    return (f"{namespace}.{name}" if namespace else name), name


def _check_name(name, what):
    if not isinstance(name, str) or not name:
        raise SchemaError(f"{what} needs a non-empty string name")
    for part in name.split("."):
        if not NAME_RE.match(part):
            raise SchemaError(f"invalid {what} name '{name}'")


def resolve(schema):
    """Turn parsed schema JSON into a tree of dicts in which named-type references
    point at the (shared) definition nodes, so recursive types become cycles.
    Logical types are dropped: they are judged by their underlying type."""
    names = {}

    def lookup(ref, namespace):
        if "." not in ref and namespace and f"{namespace}.{ref}" in names:
            return names[f"{namespace}.{ref}"]
        if ref in names:
            return names[ref]
        raise SchemaError(f"unknown type '{ref}'")

    def define(node, s, namespace, what):
        _check_name(s.get("name"), what)
        ns = s.get("namespace", namespace) if "." not in s["name"] else None
        if ns is not None and not isinstance(ns, str):
            raise SchemaError(f"namespace of '{s['name']}' must be a string")
        full, short = _split(s["name"], ns)
        if full in names:
            raise SchemaError(f"type '{full}' is defined twice")
        node_ns = full.rsplit(".", 1)[0] if "." in full else ""
        aliases = s.get("aliases", [])
        if not isinstance(aliases, list) or not all(isinstance(a, str) for a in aliases):
            raise SchemaError(f"aliases of '{full}' must be a list of strings")
        node.update(name=full, short=short, aliases={_split(a, node_ns)[0] for a in aliases} | {a.rsplit(".", 1)[-1] for a in aliases})
        names[full] = node
        return node_ns

    def walk(s, namespace):
        if isinstance(s, str):
            if s in PRIMITIVES:
                return {"type": s}
            return lookup(s, namespace)
        if isinstance(s, list):
            branches = [walk(b, namespace) for b in s]
            seen = set()
            for b in branches:
                if b["type"] == "union":
                    raise SchemaError("unions may not immediately contain other unions")
                key = b.get("name") if b["type"] in ("record", "enum", "fixed") else b["type"]
                if key in seen:
                    raise SchemaError(f"duplicate type '{key}' in union")
                seen.add(key)
            return {"type": "union", "branches": branches}
        if not isinstance(s, dict):
            raise SchemaError(f"unexpected schema element {json.dumps(s)}")
        t = s.get("type")
        if isinstance(t, (dict, list)):
            # {"type": {...}} wraps another schema (the form a field type takes).
            return walk(t, namespace)
        if not isinstance(t, str):
            raise SchemaError(f"no type in {json.dumps(s)}")
        if t in PRIMITIVES:
            return {"type": t}
        if t == "record" or t == "error":
            node = {"type": "record"}
            ns = define(node, s, namespace, "record")
            fields = s.get("fields")
            if not isinstance(fields, list):
                raise SchemaError(f"record '{node['name']}' needs a list of fields")
            node["fields"] = []
            seen = set()
            for f in fields:
                if not isinstance(f, dict) or "type" not in f:
                    raise SchemaError(f"field {json.dumps(f)} of record '{node['name']}' needs a name and a type")
                _check_name(f.get("name"), "field")
                if "." in f["name"]:
                    raise SchemaError(f"invalid field name '{f['name']}'")
                if f["name"] in seen:
                    raise SchemaError(f"field '{f['name']}' is defined twice in record '{node['name']}'")
                seen.add(f["name"])
                node["fields"].append({
                    "name": f["name"],
                    "aliases": set(f.get("aliases", []) or []),
                    "has_default": "default" in f,
                    "type": walk(f["type"], ns),
                })
            return node
        if t == "enum":
            node = {"type": "enum"}
            define(node, s, namespace, "enum")
            symbols = s.get("symbols")
            if not isinstance(symbols, list) or not all(isinstance(x, str) and NAME_RE.match(x) for x in symbols):
                raise SchemaError(f"enum '{node['name']}' needs a list of valid symbols")
            if len(set(symbols)) != len(symbols):
                raise SchemaError(f"enum '{node['name']}' has duplicate symbols")
            if "default" in s and s["default"] not in symbols:
                raise SchemaError(f"default of enum '{node['name']}' is not one of its symbols")
            node.update(symbols=symbols, has_default="default" in s)
            return node
        if t == "fixed":
            node = {"type": "fixed"}
            define(node, s, namespace, "fixed")
            size = s.get("size")
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise SchemaError(f"fixed '{node['name']}' needs a non-negative integer size")
            node["size"] = size
            return node
        if t == "array":
            if "items" not in s:
                raise SchemaError("array needs items")
            return {"type": "array", "items": walk(s["items"], namespace)}
        if t == "map":
            if "values" not in s:
                raise SchemaError("map needs values")
            return {"type": "map", "values": walk(s["values"], namespace)}
        # {"type": "SomeName"} refers to a named type defined earlier.
        return lookup(t, namespace)

    return walk(schema, "")


def parse(schema_text):
    """Validate a schema string; returns (parsed JSON, resolved tree). Raises ApiError 42201."""
    try:
        parsed = json.loads(schema_text)
    except (TypeError, ValueError) as e:
        raise invalid_schema(f"{schema_text!r}: not valid JSON ({e})")
    try:
        fastavro.parse_schema(parsed)
    except Exception as e:  # fastavro raises a range of exception types
        raise invalid_schema(f"{schema_text!r}: {type(e).__name__}: {e}")
    try:
        tree = resolve(parsed)
    except SchemaError as e:
        raise invalid_schema(f"{schema_text!r}: {e}")
    return parsed, tree


def canonical(parsed):
    return json.dumps(parsed, sort_keys=True, separators=(",", ":"))


def describe(node):
    if node["type"] in ("record", "enum", "fixed"):
        return f"{node['type']} {node['name']}"
    return node["type"]


def names_match(reader, writer):
    return (reader["short"] == writer["short"] or reader["name"] == writer["name"]
            or writer["name"] in reader["aliases"] or writer["short"] in reader["aliases"])


def can_read(reader, writer, path="", active=None):
    """None when data written with `writer` can be read with `reader`, else
    (error type, path, description) of the first problem found."""
    if active is None:
        active = set()
    key = (id(reader), id(writer))
    if key in active:  # recursive types: assume the pair holds while checking it
        return None
    active.add(key)
    try:
        return _can_read(reader, writer, path or "/", active)
    finally:
        active.discard(key)


def _can_read(r, w, path, active):
    join = (lambda *parts: (path.rstrip("/") + "/" + "/".join(str(p) for p in parts)))
    if w["type"] == "union":
        for i, branch in enumerate(w["branches"]):
            problem = can_read(r, branch, join(i), active)
            if problem:
                if r["type"] == "union":
                    return ("MISSING_UNION_BRANCH", join(i),
                            f"the reader union has no branch that can read the writer's union branch {i} ({describe(branch)})")
                return problem
        return None
    if r["type"] == "union":
        for branch in r["branches"]:
            if can_read(branch, w, path, active) is None:
                return None
        return ("MISSING_UNION_BRANCH", path, f"the reader union has no branch that can read the writer's {describe(w)}")
    rt, wt = r["type"], w["type"]
    if rt in PRIMITIVES or wt in PRIMITIVES:
        if rt == wt or rt in PROMOTIONS.get(wt, ()):
            return None
        return ("TYPE_MISMATCH", path, f"the reader's {describe(r)} cannot read the writer's {describe(w)}")
    if rt != wt:
        return ("TYPE_MISMATCH", path, f"the reader's {describe(r)} cannot read the writer's {describe(w)}")
    if rt == "array":
        return can_read(r["items"], w["items"], join("items"), active)
    if rt == "map":
        return can_read(r["values"], w["values"], join("values"), active)
    if not names_match(r, w):
        return ("NAME_MISMATCH", join("name"), f"the reader's {rt} is named '{r['name']}' but the writer's '{w['name']}'")
    if rt == "fixed":
        if r["size"] != w["size"]:
            return ("FIXED_SIZE_MISMATCH", join("size"),
                    f"fixed '{r['name']}' has size {r['size']} in the reader but {w['size']} in the writer")
        return None
    if rt == "enum":
        missing = [x for x in w["symbols"] if x not in r["symbols"]]
        if missing and not r["has_default"]:
            return ("MISSING_ENUM_SYMBOLS", join("symbols"),
                    f"the reader's enum '{r['name']}' lacks the writer's symbols {missing} and has no default")
        return None
    # records
    wfields = {f["name"]: f for f in w["fields"]}
    for i, rf in enumerate(r["fields"]):
        wf = wfields.get(rf["name"])
        if wf is None:
            wf = next((wfields[a] for a in rf["aliases"] if a in wfields), None)
        if wf is None:
            if not rf["has_default"]:
                return ("READER_FIELD_MISSING_DEFAULT_VALUE", join("fields", i),
                        f"the reader's field '{rf['name']}' has no default value and is missing from the writer")
            continue
        problem = can_read(rf["type"], wf["type"], join("fields", i, "type"), active)
        if problem:
            return problem
    return None


def check(level, new, olds):
    """First incompatibility of `new` (tree) against `olds` [(version, tree)], oldest
    first, under `level`; None when compatible. Returns (problem, version, direction)."""
    if level == "NONE" or not olds:
        return None
    against = olds if level.endswith("_TRANSITIVE") else olds[-1:]
    base = level.replace("_TRANSITIVE", "")
    for version, old in reversed(against):
        if base in ("BACKWARD", "FULL"):
            problem = can_read(new, old)
            if problem:
                return problem, version, "new schema reading data written with the old schema"
        if base in ("FORWARD", "FULL"):
            problem = can_read(old, new)
            if problem:
                return problem, version, "old schema reading data written with the new schema"
    return None


def incompatibility_message(subject, level, found, old_schema):
    (kind, path, desc), version, direction = found
    return (f'Schema being registered is incompatible with an earlier schema for subject "{subject}", '
            f"details: [{{errorType:'{kind}', description:'{direction}: {desc} (at path '{path}')'}}, "
            f"{{oldSchemaVersion: {version}}}, {{oldSchema: '{old_schema}'}}, {{compatibility: '{level}'}}]")


# ---------------------------------------------------------------------------
# State
# ---------------------------------------------------------------------------

class Registry:
    def __init__(self):
        self.lock = threading.Lock()
        self.schemas = {}      # id -> {"schema": str, "canon": str, "tree": tree}
        self.ids = {}          # canonical form -> id
        self.subjects = {}     # subject -> [{"version": int, "id": int}] in version order
        self.global_level = DEFAULT_LEVEL
        self.subject_levels = {}

    def level(self, subject):
        return self.subject_levels.get(subject, self.global_level)

    def versions_of(self, subject):
        versions = self.subjects.get(subject)
        if not versions:
            raise subject_not_found(subject)
        return versions

    def version(self, subject, v):
        versions = self.versions_of(subject)
        if v in ("latest", "-1"):
            return versions[-1]
        try:
            n = int(v)
        except ValueError:
            n = 0
        if n < 1 or str(n) != v:
            raise ApiError(422, 42202, "The specified version '%s' is not a valid version id. Allowed values are "
                                       "between [1, 2^31-1] and the string \"latest\"" % v)
        for entry in versions:
            if entry["version"] == n:
                return entry
        raise version_not_found(n)

    def entry_json(self, subject, entry):
        return {"subject": subject, "version": entry["version"], "id": entry["id"],
                "schema": self.schemas[entry["id"]]["schema"]}

    def register(self, subject, schema_text):
        parsed, tree = parse(schema_text)
        canon = canonical(parsed)
        versions = self.subjects.get(subject, [])
        for entry in versions:
            if self.schemas[entry["id"]]["canon"] == canon:
                return entry["id"]
        level = self.level(subject)
        olds = [(e["version"], self.schemas[e["id"]]["tree"]) for e in versions]
        found = check(level, tree, olds)
        if found:
            old = next(e for e in versions if e["version"] == found[1])
            raise ApiError(409, 409, incompatibility_message(subject, level, found, self.schemas[old["id"]]["schema"]))
        sid = self.ids.get(canon)
        if sid is None:
            sid = len(self.schemas) + 1
            self.schemas[sid] = {"schema": json.dumps(parsed, separators=(",", ":")), "canon": canon, "tree": tree}
            self.ids[canon] = sid
        version = versions[-1]["version"] + 1 if versions else 1
        self.subjects.setdefault(subject, []).append({"version": version, "id": sid})
        return sid

    def lookup(self, subject, schema_text):
        versions = self.versions_of(subject)
        parsed, _ = parse(schema_text)
        canon = canonical(parsed)
        for entry in versions:
            if self.schemas[entry["id"]]["canon"] == canon:
                return self.entry_json(subject, entry)
        raise schema_not_found()


# ---------------------------------------------------------------------------
# HTTP
# ---------------------------------------------------------------------------

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "pg_sink-registry-standin/1"
    registry: Registry = None
    credentials = None  # (user, password) or None

    def log_message(self, fmt, *args):  # the default per-request lines are replaced by log_line
        pass

    def log_line(self, status):
        sys.stderr.write(f"{self.command} {self.path} {status}\n")
        sys.stderr.flush()

    def reply(self, status, body, extra_headers=()):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", CONTENT_TYPE)
        self.send_header("Content-Length", str(len(data)))
        for k, v in extra_headers:
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        self.log_line(status)

    def read_body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n > 0 else b""

    def authorized(self):
        if self.credentials is None:
            return True
        header = self.headers.get("Authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            user, sep, password = base64.b64decode(value.strip(), validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        want_user, want_password = self.credentials
        return bool(sep) and hmac.compare_digest(user.encode(), want_user.encode()) \
            and hmac.compare_digest(password.encode(), want_password.encode())

    def json_body(self, raw):
        ctype = self.headers.get("Content-Type")
        if ctype is not None and ctype.split(";")[0].strip().lower() not in ACCEPTED_BODY_TYPES:
            raise ApiError(415, 415, "HTTP 415 Unsupported Media Type")
        try:
            body = json.loads(raw.decode("utf-8")) if raw.strip() else {}
        except (UnicodeDecodeError, ValueError) as e:
            raise ApiError(400, 400, f"Unexpected character in the request body: {e}")
        if not isinstance(body, dict):
            raise ApiError(422, 422, "The request body must be a JSON object")
        return body

    def handle_any(self):
        raw = self.read_body()
        try:
            if not self.authorized():
                self.reply(401, {"error_code": 401, "message": "Unauthorized"},
                           [("WWW-Authenticate", 'Basic realm="SchemaRegistry"')])
                return
            url = urllib.parse.urlsplit(self.path)
            parts = [urllib.parse.unquote(p) for p in url.path.split("/") if p]
            query = {k: v[-1] for k, v in urllib.parse.parse_qs(url.query).items()}
            body = self.json_body(raw) if self.command in ("POST", "PUT") else {}
            with self.registry.lock:
                status, out = self.route(self.command, parts, query, body)
            self.reply(status, out)
        except ApiError as e:
            self.reply(e.status, {"error_code": e.code, "message": e.message})
        except Exception as e:  # a bug here: say so instead of dropping the connection
            self.reply(500, {"error_code": 50001, "message": f"Error in the backend: {type(e).__name__}: {e}"})

    do_GET = do_POST = do_PUT = do_DELETE = handle_any

    def route(self, method, parts, query, body):
        reg = self.registry
        n = len(parts)

        def allow(*methods):
            if method not in methods:
                raise ApiError(405, 405, "HTTP 405 Method Not Allowed")

        if n == 0:
            allow("GET")
            return 200, {}
        head = parts[0]
        if head == "schemas":
            if n == 2 and parts[1] == "types":
                allow("GET")
                return 200, ["AVRO"]
            if n in (3, 4) and parts[1] == "ids":
                allow("GET")
                try:
                    sid = int(parts[2])
                except ValueError:
                    raise schema_not_found(parts[2])
                if sid not in reg.schemas:
                    raise schema_not_found(sid)
                if n == 3:
                    return 200, {"schema": reg.schemas[sid]["schema"]}
                if parts[3] == "versions":
                    return 200, [{"subject": s, "version": e["version"]}
                                 for s, vs in reg.subjects.items() for e in vs if e["id"] == sid]
                if parts[3] == "schema":
                    return 200, json.loads(reg.schemas[sid]["schema"])
        elif head == "subjects":
            if n == 1:
                allow("GET")
                prefix = query.get("subjectPrefix", "")
                return 200, [s for s in reg.subjects if s.startswith(prefix)]
            subject = parts[1]
            if n == 2:
                allow("POST", "DELETE")
                if method == "POST":
                    return 200, reg.lookup(subject, self.schema_text(body))
                versions = reg.versions_of(subject)
                del reg.subjects[subject]
                return 200, [e["version"] for e in versions]
            if parts[2] == "versions":
                if n == 3:
                    allow("GET", "POST")
                    if method == "GET":
                        return 200, [e["version"] for e in reg.versions_of(subject)]
                    return 200, {"id": reg.register(subject, self.schema_text(body))}
                if n == 4:
                    allow("GET", "DELETE")
                    entry = reg.version(subject, parts[3])
                    if method == "GET":
                        return 200, reg.entry_json(subject, entry)
                    reg.subjects[subject].remove(entry)
                    if not reg.subjects[subject]:
                        del reg.subjects[subject]
                    return 200, entry["version"]
                if n == 5 and parts[4] == "schema":
                    allow("GET")
                    entry = reg.version(subject, parts[3])
                    return 200, json.loads(reg.schemas[entry["id"]]["schema"])
        elif head == "config":
            if n == 1:
                allow("GET", "PUT")
                if method == "GET":
                    return 200, {"compatibilityLevel": reg.global_level}
                reg.global_level = self.level_of(body)
                return 200, {"compatibility": reg.global_level}
            if n == 2:
                allow("GET", "PUT", "DELETE")
                subject = parts[1]
                if method == "PUT":
                    reg.subject_levels[subject] = self.level_of(body)
                    return 200, {"compatibility": reg.subject_levels[subject]}
                if subject not in reg.subject_levels:
                    if method == "GET" and query.get("defaultToGlobal", "").lower() == "true":
                        return 200, {"compatibilityLevel": reg.global_level}
                    raise ApiError(404, 40408, f"Subject '{subject}' does not have subject-level compatibility configured")
                if method == "GET":
                    return 200, {"compatibilityLevel": reg.subject_levels[subject]}
                return 200, {"compatibility": reg.subject_levels.pop(subject)}
        elif head == "compatibility":
            if n in (4, 5) and parts[1] == "subjects" and parts[3] == "versions":
                allow("POST")
                subject = parts[2]
                _, tree = parse(self.schema_text(body))
                level = reg.level(subject)
                if n == 5:
                    entry = reg.version(subject, parts[4])
                    olds = [(entry["version"], reg.schemas[entry["id"]]["tree"])]
                    level = level.replace("_TRANSITIVE", "")
                else:  # against every version the level asks for
                    olds = [(e["version"], reg.schemas[e["id"]]["tree"]) for e in reg.subjects.get(subject, [])]
                found = check(level, tree, olds)
                out = {"is_compatible": found is None}
                if query.get("verbose", "").lower() == "true":
                    out["messages"] = [] if found is None else [
                        f"{found[2]}: {found[0][0]} at '{found[0][1]}': {found[0][2]} (version {found[1]}, {level})"]
                return 200, out
        raise ApiError(404, 404, "HTTP 404 Not Found")

    @staticmethod
    def schema_text(body):
        schema_type = body.get("schemaType", "AVRO")
        if schema_type != "AVRO":
            raise invalid_schema(f"of type {schema_type!r}: only AVRO is supported by this stand-in")
        if body.get("references"):
            raise invalid_schema("with references: schema references are not supported by this stand-in")
        schema = body.get("schema")
        if not isinstance(schema, str) or not schema.strip():
            raise ApiError(422, 42201, "Empty schema" if schema in (None, "") else "Invalid schema: 'schema' must be a string")
        return schema

    @staticmethod
    def level_of(body):
        level = body.get("compatibility")
        if not isinstance(level, str) or level.upper() not in LEVELS:
            raise invalid_level()
        return level.upper()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=18081)
    ap.add_argument("--user")
    ap.add_argument("--password")
    args = ap.parse_args()
    if (args.user is None) != (args.password is None):
        ap.error("--user and --password go together")
    Handler.registry = Registry()
    Handler.credentials = (args.user, args.password) if args.user is not None else None
    server = http.server.ThreadingHTTPServer((args.host, args.port), Handler)
    server.daemon_threads = True
    sys.stderr.write(f"schema registry stand-in listening on {args.host}:{args.port}"
                     f"{' (basic auth)' if Handler.credentials else ''}\n")
    sys.stderr.flush()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
