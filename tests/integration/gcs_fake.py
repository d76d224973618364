"""A FAKE Google Cloud Storage server for the `gcs` connector's tests: a small
threaded HTTP server on 127.0.0.1 (standard library only) that keeps objects in
memory. It is not an emulator and not GCS: it answers exactly the XML-API calls
that pg_sink's GCS client (the Rust crate object_store 0.12.5, src/gcp/client.rs
and credential.rs, with the S3-style list and multipart XML of src/client/s3.rs)
makes, the way GCS documents them, and nothing else.

Why a fake: no GCS emulator that can be installed on this machine accepts those
calls (fake-gcs-server, for one, lacks XML multipart uploads and ignores
x-goog-if-generation-match; object_store's own tests skip those cases against it),
so without this file the GCS path could only be tested for configuration.

What it implements (`<base>/<bucket>/<object>`, names percent-encoded as
object_store sends them, `/` as %2F):

* Authentication. With a service-account key, object_store 0.12.5 does not call
  the key's `token_uri`: it signs a JWT itself (RS256, `kid` = private_key_id,
  iss = sub = client_email, a scope, iat, exp) and sends it as the Bearer token.
  The fake checks that JWT against the public half of keys registered with
  `add_service_account(key_json)` (RSA signature verified in pure Python), and
  answers 401 to a request without a Bearer token, with an unknown, expired or
  badly signed one. The OAuth2 token endpoint a key's `token_uri` may point at is
  served too (POST /token, grant_type jwt-bearer, a signed assertion;
  answers {"access_token", "expires_in", "token_type"}), and its tokens are
  accepted as Bearer tokens; object_store 0.12.5 does not use it.
* PUT object, with Content-Type, Cache-Control, Content-Disposition,
  Content-Encoding, Content-Language and x-goog-meta-* kept;
  `x-goog-if-generation-match` (0: create only, else the current generation;
  412 when it does not hold). Answers ETag (quoted MD5), x-goog-generation,
  x-goog-metageneration.
* Copy: PUT with `x-goog-copy-source: <bucket>/<object>` (and the same
  precondition), answered with a CopyObjectResult.
* XML multipart upload: POST ?uploads (InitiateMultipartUploadResult with an
  UploadId), PUT ?partNumber=N&uploadId=U (ETag of the part), POST ?uploadId=U with
  a CompleteMultipartUpload body (parts in ascending order, ETags matching, every
  part but the last at least 5 MiB, as GCS requires; CompleteMultipartUploadResult
  with the ETag "<md5 of the parts' md5s>-<parts>" and x-goog-generation), and
  DELETE ?uploadId=U (abort).
* GET and HEAD with ETag, Last-Modified, Content-Length, x-goog-generation and the
  kept headers; `Range` (bytes=a-b, a-, -n; 206 with Content-Range, 416);
  If-Match / If-None-Match / If-Modified-Since / If-Unmodified-Since (412 / 304);
  ?generation=G (404 unless it is the current one).
* DELETE object (204; 404 NoSuchKey when absent).
* Listing: GET <base>/<bucket>?list-type=2 with prefix, delimiter (CommonPrefixes),
  start-after, max-keys and continuation-token (NextContinuationToken), as a
  ListBucketResult; `page_size` caps every page so that a test exercises
  continuation with few objects.
* Errors are GCS's XML <Error><Code>..</Code><Message>..</Message></Error>;
  a bucket must exist (`make_bucket`), else 404 NoSuchBucket.

For tests: `start(port)` (or `FakeGcs(port).start()`) and `server.stop()`;
`make_bucket(name)` creates or empties a bucket; `objects(bucket, prefix)` gives
{name relative to prefix: bytes}; `object(bucket, name)` the stored object (data,
etag, generation, parts, headers); `uploads(bucket)` the multipart uploads not
completed nor aborted; `requests` every request as (operation, bucket, object,
status, query) and `ops()` a Counter of operations; `auth` counts of accepted
("jwt", "oauth") and refused ("refused") credentials.

Run this file directly for a self-check (every call above through urllib)."""
import base64
import collections
import dataclasses
import email.utils
import hashlib
import hmac
import http.server
import json
import re
import secrets
import socket
import threading
import time
import urllib.parse
import xml.etree.ElementTree as ET
from datetime import datetime, timezone
from xml.sax.saxutils import escape

MIN_PART = 5 * 1024 * 1024
XMLNS = "http://s3.amazonaws.com/doc/2006-03-01/"
# The header names of an object that are kept and given back on GET / HEAD.
KEPT = ("content-type", "cache-control", "content-disposition", "content-encoding", "content-language", "x-goog-storage-class")
# DER DigestInfo prefix of SHA-256 (RFC 8017, EMSA-PKCS1-v1_5).
SHA256_INFO = bytes.fromhex("3031300d060960864801650304020105000420")


# ---------------------------------------------------------------- keys and JWTs


def _b64url(text):
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _der(data, i):
    """(tag, start of content, end of content) of the DER element at i."""
    tag, n = data[i], data[i + 1]
    i += 2
    if n & 0x80:
        k = n & 0x7F
        n = int.from_bytes(data[i:i + k], "big")
        i += k
    return tag, i, i + n


def _der_children(data, start, end):
    out = []
    while start < end:
        tag, s, e = _der(data, start)
        out.append((tag, s, e))
        start = e
    return out


def rsa_public_numbers(pem):
    """(n, e) of an unencrypted RSA private key in PEM: PKCS#8 ("PRIVATE KEY") or
    PKCS#1 ("RSA PRIVATE KEY")."""
    m = re.search(r"-----BEGIN (RSA )?PRIVATE KEY-----(.*?)-----END", pem, re.S)
    if not m:
        raise ValueError("no unencrypted RSA private key in PEM")
    der = base64.b64decode("".join(m.group(2).split()))
    tag, s, e = _der(der, 0)
    fields = _der_children(der, s, e)
    if not m.group(1):  # PKCS#8: version, algorithm, OCTET STRING holding PKCS#1
        tag, s, e = fields[2]
        assert tag == 0x04, "PKCS#8 private key is not an OCTET STRING"
        tag, s, e = _der(der, s)
        fields = _der_children(der, s, e)
    (_, ns, ne), (_, es, ee) = fields[1], fields[2]
    return int.from_bytes(der[ns:ne], "big"), int.from_bytes(der[es:ee], "big")


def rsa_verify(n, e, message, signature):
    """RSASSA-PKCS1-v1_5 with SHA-256 (JWT's RS256)."""
    k = (n.bit_length() + 7) // 8
    if len(signature) != k:
        return False
    em = pow(int.from_bytes(signature, "big"), e, n).to_bytes(k, "big")
    info = SHA256_INFO + hashlib.sha256(message).digest()
    want = b"\x00\x01" + b"\xff" * (k - 3 - len(info)) + b"\x00" + info
    return hmac.compare_digest(em, want)


@dataclasses.dataclass
class ServiceAccount:
    email: str
    key_id: str
    n: int
    e: int


# ---------------------------------------------------------------- state


@dataclasses.dataclass
class Obj:
    data: bytes
    etag: str  # quoted, as sent in the ETag header
    generation: int
    modified: float  # epoch seconds
    headers: dict  # kept header (lower-case) -> value
    parts: int = 0  # 0: one PUT (or a copy of one); N: a multipart upload of N parts


@dataclasses.dataclass
class Upload:
    bucket: str
    name: str
    headers: dict
    parts: dict = dataclasses.field(default_factory=dict)  # number -> (data, quoted etag)


class GcsError(Exception):
    def __init__(self, status, code, message, extra=()):
        super().__init__(message)
        self.status, self.code, self.message, self.extra = status, code, message, list(extra)


def _md5_etag(data):
    return '"' + hashlib.md5(data).hexdigest() + '"'


def _http_date(ts):
    return email.utils.formatdate(ts, usegmt=True)


def _iso(ts):
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _parse_http_date(text):
    try:
        return email.utils.parsedate_to_datetime(text).timestamp()
    except (TypeError, ValueError):
        return None


# ---------------------------------------------------------------- HTTP


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, fake):
        self.fake = fake
        super().__init__(("127.0.0.1", fake.port), _Handler)

    def process_request(self, request, client_address):
        with self.fake.lock:
            self.fake._conns.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request):
        with self.fake.lock:
            self.fake._conns.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request, client_address):
        pass  # a client that went away (a killed worker, a stop()) is not an error here


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 300

    def log_message(self, *args):
        pass

    def _read_body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = bytearray()
            while True:
                line = self.rfile.readline()
                if not line:
                    return None
                size = int(line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(out)
                chunk = self.rfile.read(size)
                if len(chunk) < size:
                    return None
                out += chunk
                self.rfile.readline()
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n) if n else b""
        return body if len(body) == n else None

    def _handle(self):
        body = self._read_body()
        if body is None:  # the client went away mid-request
            self.close_connection = True
            return
        headers = {k.lower(): v for k, v in self.headers.items()}
        status, out_headers, data = self.server.fake._dispatch(self.command, self.path, headers, body)
        self.send_response(status)
        names = {k.lower() for k, _ in out_headers}
        for k, v in out_headers:
            self.send_header(k, v)
        if "content-length" not in names:
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD" and data:
            self.wfile.write(data)
        self.wfile.flush()

    do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _handle


class FakeGcs:
    def __init__(self, port, page_size=1000):
        self.port = port
        self.page_size = page_size
        self.lock = threading.Lock()
        self.buckets = {}  # name -> {object name: Obj}
        self._uploads = {}  # upload id -> Upload
        self.accounts = {}  # client_email -> ServiceAccount
        self._tokens = {}  # OAuth access token -> expiry (epoch seconds)
        self._verified = {}  # self-signed JWT -> expiry
        self.requests = []  # (operation, bucket, object, status, query)
        self.auth = collections.Counter()
        self._generation = 0
        self._server = None
        self._thread = None
        self._conns = set()

    # -- control -----------------------------------------------------------------
    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    @property
    def token_uri(self):
        return self.url + "/token"

    def start(self):
        assert self._server is None, "already running"
        deadline = time.time() + 30
        while True:
            try:
                self._server = _Server(self)
                break
            except OSError:
                if time.time() > deadline:
                    raise
                time.sleep(0.2)
        self.port = self._server.server_address[1]  # port 0: the one chosen
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        self._thread.start()
        return self

    def stop(self):
        """Close the listening socket and every open connection."""
        srv, self._server = self._server, None
        if srv is None:
            return
        srv.shutdown()
        srv.server_close()
        self._thread.join(timeout=10)
        with self.lock:
            conns = list(self._conns)
            self._conns.clear()
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def add_service_account(self, key_json):
        """Trust a service-account key (its JSON text): requests signed with it pass."""
        key = json.loads(key_json)
        n, e = rsa_public_numbers(key["private_key"])
        with self.lock:
            self.accounts[key["client_email"]] = ServiceAccount(key["client_email"], key["private_key_id"], n, e)

    def make_bucket(self, name):
        """An empty bucket (emptied when it exists, its uploads dropped)."""
        with self.lock:
            self.buckets[name] = {}
            self._uploads = {k: u for k, u in self._uploads.items() if u.bucket != name}

    # -- what is stored ------------------------------------------------------------
    def objects(self, bucket, prefix=""):
        """Objects under `prefix` as {name relative to prefix: bytes}."""
        with self.lock:
            return {k[len(prefix):]: o.data for k, o in sorted(self.buckets[bucket].items()) if k.startswith(prefix)}

    def object(self, bucket, name):
        with self.lock:
            return self.buckets[bucket].get(name)

    def uploads(self, bucket):
        """Multipart uploads neither completed nor aborted: [(upload id, name)]."""
        with self.lock:
            return [(k, u.name) for k, u in self._uploads.items() if u.bucket == bucket]

    def ops(self, bucket=None):
        with self.lock:
            return collections.Counter(r[0] for r in self.requests if bucket is None or r[1] == bucket)

    # -- requests --------------------------------------------------------------------
    def _dispatch(self, method, raw_path, headers, body):
        """(status, headers, body) for one request; records it."""
        split = urllib.parse.urlsplit(raw_path)
        query = urllib.parse.parse_qs(split.query, keep_blank_values=True)
        q = {k: v[-1] for k, v in query.items()}
        segments = split.path.split("/", 2)
        bucket = urllib.parse.unquote(segments[1]) if len(segments) > 1 else ""
        name = urllib.parse.unquote(segments[2]) if len(segments) > 2 else ""
        op = "unknown"
        try:
            if method == "POST" and split.path == "/token":
                op = "token"
                status, out, data = self._token(body)
            else:
                op = self._operation(method, name, q, headers)
                with self.lock:
                    self._authenticate(headers)
                    if bucket not in self.buckets:
                        raise GcsError(404, "NoSuchBucket", f"The specified bucket {bucket!r} does not exist.")
                    status, out, data = getattr(self, "_" + op)(bucket, name, q, headers, body)
        except GcsError as e:
            status, data = e.status, self._error_xml(e.code, e.message)
            out = [("Content-Type", "application/xml; charset=UTF-8"), *e.extra]
        with self.lock:
            self.requests.append((op, bucket, name, status, q))
        return status, out, data

    @staticmethod
    def _operation(method, name, q, headers):
        if not name:
            if method == "GET" and q.get("list-type") == "2":
                return "list"
            raise GcsError(400, "InvalidArgument", f"the fake serves only list-type=2 listings on a bucket, not {method} {q}")
        if method == "PUT":
            if "uploadId" in q or "partNumber" in q:
                return "upload_part"
            return "copy" if "x-goog-copy-source" in headers else "put"
        if method == "POST":
            if "uploads" in q:
                return "upload_start"
            if "uploadId" in q:
                return "upload_complete"
        if method == "DELETE":
            return "upload_abort" if "uploadId" in q else "delete"
        if method in ("GET", "HEAD"):
            return method.lower()
        raise GcsError(405, "MethodNotAllowed", f"the fake does not implement {method} {q}")

    @staticmethod
    def _error_xml(code, message):
        return (f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{escape(code)}</Code>"
                f"<Message>{escape(message)}</Message></Error>").encode()

    # -- authentication --------------------------------------------------------------
    def _check_jwt(self, token, audience=None):
        """The claims of a JWT signed by a registered key; GcsError(401) otherwise."""
        def refuse(why):
            raise GcsError(401, "AuthenticationRequired", f"invalid credentials: {why}", [("WWW-Authenticate", 'Bearer realm="fake-gcs"')])
        parts = token.split(".")
        if len(parts) != 3:
            refuse("the Bearer token is not a JWT")
        try:
            header, claims = json.loads(_b64url(parts[0])), json.loads(_b64url(parts[1]))
            signature = _b64url(parts[2])
        except ValueError:
            refuse("the JWT does not decode")
        if header.get("alg") != "RS256" or header.get("typ", "JWT") != "JWT":
            refuse(f"unexpected JWT header {header}")
        account = self.accounts.get(claims.get("iss"))
        if account is None:
            refuse(f"unknown service account {claims.get('iss')!r}")
        if header.get("kid") not in (None, account.key_id):
            refuse(f"unknown key id {header.get('kid')!r}")
        if not rsa_verify(account.n, account.e, f"{parts[0]}.{parts[1]}".encode(), signature):
            refuse("bad JWT signature")
        now = time.time()
        iat, exp = claims.get("iat"), claims.get("exp")
        if not isinstance(iat, int) or not isinstance(exp, int) or iat > now + 300 or exp <= now or exp - iat > 3600:
            refuse(f"bad JWT times iat={iat} exp={exp}")
        if audience is not None:
            if claims.get("aud") != audience:
                refuse(f"JWT audience {claims.get('aud')!r}, expected {audience!r}")
        else:
            if claims.get("sub", account.email) != account.email:
                refuse("JWT subject is not the issuer")
            scopes = (claims.get("scope") or "").split()
            if not any(s.startswith("https://www.googleapis.com/auth/") for s in scopes) and not claims.get("aud"):
                refuse("a self-signed JWT needs a scope or an audience")
        return claims

    def _authenticate(self, headers):
        auth = headers.get("authorization", "")
        if not auth.startswith("Bearer ") or not auth[7:].strip():
            self.auth["refused"] += 1
            raise GcsError(401, "AuthenticationRequired", "Anonymous caller does not have storage access.",
                           [("WWW-Authenticate", 'Bearer realm="fake-gcs"')])
        token = auth[7:].strip()
        now = time.time()
        if self._tokens.get(token, 0) > now:
            self.auth["oauth"] += 1
            return
        if self._verified.get(token, 0) > now:
            self.auth["jwt"] += 1
            return
        try:
            claims = self._check_jwt(token)
        except GcsError:
            self.auth["refused"] += 1
            raise
        self._verified[token] = claims["exp"]
        self.auth["jwt"] += 1

    def _token(self, body):
        form = {k: v[-1] for k, v in urllib.parse.parse_qs(body.decode("utf-8", "replace")).items()}
        if form.get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer" or "assertion" not in form:
            return 400, [("Content-Type", "application/json")], json.dumps({"error": "unsupported_grant_type"}).encode()
        with self.lock:
            try:
                self._check_jwt(form["assertion"], audience=self.token_uri)
            except GcsError as e:
                self.auth["refused"] += 1
                return 400, [("Content-Type", "application/json")], json.dumps({"error": "invalid_grant", "error_description": e.message}).encode()
            token = "fake-gcs." + secrets.token_urlsafe(24)
            self._tokens[token] = time.time() + 3600
        return 200, [("Content-Type", "application/json")], json.dumps({"access_token": token, "expires_in": 3600, "token_type": "Bearer"}).encode()

    # -- objects -------------------------------------------------------------------------
    def _next_generation(self):
        self._generation = max(self._generation + 1, int(time.time() * 1_000_000))
        return self._generation

    def _precondition(self, bucket, name, headers):
        want = headers.get("x-goog-if-generation-match")
        if want is None:
            return
        current = self.buckets[bucket].get(name)
        have = current.generation if current else 0
        if str(have) != want.strip():
            raise GcsError(412, "PreconditionFailed", "At least one of the pre-conditions you specified did not hold.")

    def _store(self, bucket, name, data, etag, headers, parts=0):
        obj = Obj(data, etag, self._next_generation(), time.time(), headers, parts)
        self.buckets[bucket][name] = obj
        return obj

    @staticmethod
    def _kept(headers):
        kept = {k: v for k, v in headers.items() if k in KEPT or k.startswith("x-goog-meta-")}
        kept.setdefault("content-type", "application/octet-stream")
        return kept

    @staticmethod
    def _put_headers(obj):
        return [("ETag", obj.etag), ("x-goog-generation", str(obj.generation)), ("x-goog-metageneration", "1")]

    def _put(self, bucket, name, q, headers, body):
        self._precondition(bucket, name, headers)
        obj = self._store(bucket, name, body, _md5_etag(body), self._kept(headers))
        return 200, self._put_headers(obj), b""

    def _copy(self, bucket, name, q, headers, body):
        source = urllib.parse.unquote(headers["x-goog-copy-source"]).lstrip("/")
        src_bucket, _, src_name = source.partition("/")
        src = self.buckets.get(src_bucket, {}).get(src_name)
        if src is None:
            raise GcsError(404, "NoSuchKey", f"The specified key {source!r} does not exist.")
        self._precondition(bucket, name, headers)
        obj = self._store(bucket, name, src.data, src.etag, dict(src.headers), src.parts)
        xml = (f"<?xml version='1.0' encoding='UTF-8'?><CopyObjectResult><LastModified>{_iso(obj.modified)}</LastModified>"
               f"<ETag>{escape(obj.etag)}</ETag></CopyObjectResult>").encode()
        return 200, [*self._put_headers(obj), ("Content-Type", "application/xml; charset=UTF-8")], xml

    def _object_or_404(self, bucket, name):
        obj = self.buckets[bucket].get(name)
        if obj is None:
            raise GcsError(404, "NoSuchKey", "The specified key does not exist.")
        return obj

    def _get(self, bucket, name, q, headers, body, head=False):
        obj = self._object_or_404(bucket, name)
        if "generation" in q and q["generation"] != str(obj.generation):
            raise GcsError(404, "NoSuchKey", f"No such object generation {q['generation']}.")
        meta = [("ETag", obj.etag), ("Last-Modified", _http_date(obj.modified)), ("x-goog-generation", str(obj.generation)),
                ("x-goog-metageneration", "1"), ("x-goog-stored-content-length", str(len(obj.data))),
                ("x-goog-hash", "md5=" + base64.b64encode(hashlib.md5(obj.data).digest()).decode())]
        meta += [(k, v) for k, v in obj.headers.items()]
        tags = lambda v: [t.strip() for t in v.split(",")]  # noqa: E731
        if "if-match" in headers and "*" not in tags(headers["if-match"]) and obj.etag not in tags(headers["if-match"]):
            raise GcsError(412, "PreconditionFailed", "If-Match does not hold.")
        since = _parse_http_date(headers.get("if-unmodified-since", ""))
        if since is not None and int(obj.modified) > since:
            raise GcsError(412, "PreconditionFailed", "If-Unmodified-Since does not hold.")
        if "if-none-match" in headers:
            if "*" in tags(headers["if-none-match"]) or obj.etag in tags(headers["if-none-match"]):
                return 304, meta, b""
        else:
            since = _parse_http_date(headers.get("if-modified-since", ""))
            if since is not None and int(obj.modified) <= since:
                return 304, meta, b""
        size = len(obj.data)
        rng = headers.get("range")
        if rng is None:
            return 200, [*meta, ("Content-Length", str(size))], (b"" if head else obj.data)
        m = re.fullmatch(r"bytes=(\d*)-(\d*)", rng.strip())
        if not m or (m.group(1) == "" and m.group(2) == ""):
            raise GcsError(400, "InvalidArgument", f"bad Range {rng!r}")
        if m.group(1) == "":
            start, end = max(size - int(m.group(2)), 0), size - 1
        else:
            start = int(m.group(1))
            end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
        if start >= size or start > end:
            raise GcsError(416, "InvalidRange", "The requested range cannot be satisfied.", [("Content-Range", f"bytes */{size}")])
        part = obj.data[start:end + 1]
        return 206, [*meta, ("Content-Range", f"bytes {start}-{end}/{size}"), ("Content-Length", str(len(part)))], (b"" if head else part)

    def _head(self, bucket, name, q, headers, body):
        return self._get(bucket, name, q, headers, body, head=True)

    def _delete(self, bucket, name, q, headers, body):
        self._object_or_404(bucket, name)
        self._precondition(bucket, name, headers)
        del self.buckets[bucket][name]
        return 204, [], b""

    # -- multipart ------------------------------------------------------------------------
    def _upload(self, bucket, name, q):
        upload = self._uploads.get(q.get("uploadId"))
        if upload is None or (upload.bucket, upload.name) != (bucket, name):
            raise GcsError(404, "NoSuchUpload", "The specified multipart upload does not exist.")
        return upload

    def _upload_start(self, bucket, name, q, headers, body):
        upload_id = "fake-" + secrets.token_hex(16)
        self._uploads[upload_id] = Upload(bucket, name, self._kept(headers))
        xml = (f"<?xml version='1.0' encoding='UTF-8'?><InitiateMultipartUploadResult xmlns=\"{XMLNS}\">"
               f"<Bucket>{escape(bucket)}</Bucket><Key>{escape(name)}</Key><UploadId>{upload_id}</UploadId>"
               f"</InitiateMultipartUploadResult>").encode()
        return 200, [("Content-Type", "application/xml; charset=UTF-8")], xml

    def _upload_part(self, bucket, name, q, headers, body):
        upload = self._upload(bucket, name, q)
        try:
            number = int(q.get("partNumber", ""))
        except ValueError:
            number = 0
        if not 1 <= number <= 10000:
            raise GcsError(400, "InvalidArgument", f"bad partNumber {q.get('partNumber')!r}")
        etag = _md5_etag(body)
        upload.parts[number] = (body, etag)
        return 200, [("ETag", etag)], b""

    def _upload_complete(self, bucket, name, q, headers, body):
        upload = self._upload(bucket, name, q)
        try:
            root = ET.fromstring(body)
        except ET.ParseError as e:
            raise GcsError(400, "MalformedXML", f"CompleteMultipartUpload body: {e}")
        if root.tag.split("}")[-1] != "CompleteMultipartUpload":
            raise GcsError(400, "MalformedXML", f"expected CompleteMultipartUpload, got {root.tag}")
        listed = []
        for p in root:
            fields = {c.tag.split("}")[-1]: (c.text or "") for c in p}
            try:
                listed.append((int(fields["PartNumber"]), fields["ETag"]))
            except (KeyError, ValueError):
                raise GcsError(400, "MalformedXML", f"a Part needs PartNumber and ETag: {fields}")
        if not listed:
            raise GcsError(400, "MalformedXML", "no parts")
        numbers = [n for n, _ in listed]
        if numbers != sorted(set(numbers)):
            raise GcsError(400, "InvalidPartOrder", f"parts must be listed in ascending order: {numbers}")
        datas = []
        for i, (n, etag) in enumerate(listed):
            if n not in upload.parts or upload.parts[n][1].strip('"') != etag.strip().strip('"'):
                raise GcsError(400, "InvalidPart", f"part {n} was not uploaded or its ETag {etag} does not match")
            data = upload.parts[n][0]
            if i < len(listed) - 1 and len(data) < MIN_PART:
                raise GcsError(400, "EntityTooSmall", f"part {n} has {len(data)} bytes, less than 5 MiB, and is not the last")
            datas.append(data)
        digest = hashlib.md5(b"".join(hashlib.md5(d).digest() for d in datas)).hexdigest()
        obj = self._store(bucket, name, b"".join(datas), f'"{digest}-{len(datas)}"', upload.headers, len(datas))
        del self._uploads[q["uploadId"]]
        xml = (f"<?xml version='1.0' encoding='UTF-8'?><CompleteMultipartUploadResult xmlns=\"{XMLNS}\">"
               f"<Location>{escape(self.url)}/{escape(bucket)}/{escape(name)}</Location><Bucket>{escape(bucket)}</Bucket>"
               f"<Key>{escape(name)}</Key><ETag>{escape(obj.etag)}</ETag></CompleteMultipartUploadResult>").encode()
        return 200, [("x-goog-generation", str(obj.generation)), ("Content-Type", "application/xml; charset=UTF-8")], xml

    def _upload_abort(self, bucket, name, q, headers, body):
        self._upload(bucket, name, q)
        del self._uploads[q["uploadId"]]
        return 204, [], b""

    # -- listing ----------------------------------------------------------------------------
    def _list(self, bucket, name, q, headers, body):
        prefix, delimiter = q.get("prefix", ""), q.get("delimiter", "")
        try:
            max_keys = min(int(q.get("max-keys", "1000")), 1000, self.page_size)
        except ValueError:
            raise GcsError(400, "InvalidArgument", f"bad max-keys {q.get('max-keys')!r}")
        after = q.get("start-after", "")
        token = q.get("continuation-token")
        if token is not None:
            try:
                after = max(after, _b64url(token).decode())
            except ValueError:
                raise GcsError(400, "InvalidArgument", "bad continuation-token")
        # Entries in name order: objects, and common prefixes (each once).
        entries = []
        for key in sorted(self.buckets[bucket]):
            if not key.startswith(prefix):
                continue
            cut = key.find(delimiter, len(prefix)) if delimiter else -1
            entry = ("prefix", key[:cut + len(delimiter)]) if cut >= 0 else ("object", key)
            if entries and entries[-1] == entry:
                continue
            if after and (entry[1] <= after or (entry[0] == "prefix" and after.startswith(entry[1]))):
                continue
            entries.append(entry)
        page, more = entries[:max_keys], len(entries) > max_keys
        contents, prefixes = [], []
        for kind, key in page:
            if kind == "prefix":
                prefixes.append(f"<CommonPrefixes><Prefix>{escape(key)}</Prefix></CommonPrefixes>")
                continue
            o = self.buckets[bucket][key]
            contents.append(f"<Contents><Key>{escape(key)}</Key><Generation>{o.generation}</Generation><MetaGeneration>1</MetaGeneration>"
                            f"<LastModified>{_iso(o.modified)}</LastModified><ETag>{escape(o.etag)}</ETag><Size>{len(o.data)}</Size></Contents>")
        xml = (f"<?xml version='1.0' encoding='UTF-8'?><ListBucketResult xmlns=\"{XMLNS}\"><Name>{escape(bucket)}</Name>"
               f"<Prefix>{escape(prefix)}</Prefix><KeyCount>{len(page)}</KeyCount><MaxKeys>{max_keys}</MaxKeys>"
               + (f"<Delimiter>{escape(delimiter)}</Delimiter>" if delimiter else "")
               + f"<IsTruncated>{'true' if more else 'false'}</IsTruncated>"
               + "".join(contents) + "".join(prefixes)
               + (f"<NextContinuationToken>{base64.urlsafe_b64encode(page[-1][1].encode()).decode()}</NextContinuationToken>" if more else "")
               + "</ListBucketResult>")
        return 200, [("Content-Type", "application/xml; charset=UTF-8")], xml.encode()


def start(port, **kwargs):
    """A started FakeGcs on 127.0.0.1:port (0: any free port); stop it with .stop()."""
    return FakeGcs(port, **kwargs).start()


# ---------------------------------------------------------------- self-check


def _self_check():
    """Every call through urllib, the key made with the openssl command."""
    import subprocess
    import urllib.error
    import urllib.request

    pem = subprocess.run(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
                         check=True, capture_output=True, text=True).stdout
    fake = start(0, page_size=2)
    key = {"type": "service_account", "private_key": pem, "private_key_id": "kid1", "client_email": "sa@p.iam.gserviceaccount.com",
           "token_uri": fake.token_uri}

    def sign(claims):
        import tempfile
        h = base64.urlsafe_b64encode(json.dumps({"alg": "RS256", "typ": "JWT", "kid": "kid1"}).encode()).rstrip(b"=")
        c = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=")
        with tempfile.NamedTemporaryFile("w", suffix=".pem") as f:
            f.write(pem)
            f.flush()
            sig = subprocess.run(["openssl", "dgst", "-sha256", "-sign", f.name], input=h + b"." + c, check=True, capture_output=True).stdout
        return (h + b"." + c + b"." + base64.urlsafe_b64encode(sig).rstrip(b"=")).decode()

    now = int(time.time())
    jwt = sign({"iss": key["client_email"], "sub": key["client_email"], "scope": "https://www.googleapis.com/auth/cloud-platform", "iat": now, "exp": now + 3600})

    def call(method, path, body=b"", headers=None, token=jwt):
        h = dict(headers or {})
        if token:
            h["Authorization"] = "Bearer " + token
        req = urllib.request.Request(fake.url + path, data=body if method in ("PUT", "POST") else None, method=method, headers=h)
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, r.headers, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.headers, e.read()

    enc = lambda name: "/b/" + urllib.parse.quote(name, safe="")  # noqa: E731
    try:
        fake.make_bucket("b")
        assert call("PUT", enc("a/x.txt"), b"hello")[0] == 401, "no trusted key yet"
        fake.add_service_account(json.dumps(key))
        assert call("PUT", enc("a/x.txt"), b"hello", token=None)[0] == 401
        assert call("PUT", enc("a/x.txt"), b"hello", token=jwt[:-4] + "AAAA")[0] == 401
        st, h, _ = call("PUT", enc("a/x.txt"), b"hello", {"Content-Type": "text/plain", "x-goog-meta-k": "v"})
        assert st == 200 and h["ETag"] == _md5_etag(b"hello") and h["x-goog-generation"], (st, h)
        assert call("PUT", enc("a/x.txt"), b"again", {"x-goog-if-generation-match": "0"})[0] == 412
        meta = {"Content-Type": "text/plain", "x-goog-meta-k": "v"}
        assert call("PUT", enc("a/x.txt"), b"again", {**meta, "x-goog-if-generation-match": h["x-goog-generation"]})[0] == 200
        st, h, data = call("GET", enc("a/x.txt"))
        assert (st, data, h["Content-Type"], h["x-goog-meta-k"]) == (200, b"again", "text/plain", "v"), (st, h, data)
        assert call("GET", enc("a/x.txt"), headers={"Range": "bytes=1-3"})[2] == b"gai"
        assert call("GET", enc("a/x.txt"), headers={"Range": "bytes=-2"})[1]["Content-Range"] == "bytes 3-4/5"
        assert call("GET", enc("a/x.txt"), headers={"Range": "bytes=9-"})[0] == 416
        assert call("GET", enc("a/x.txt"), headers={"If-None-Match": h["ETag"]})[0] == 304
        assert call("HEAD", enc("a/x.txt"))[1]["Content-Length"] == "5"
        assert call("PUT", enc("a/y.txt"), headers={"x-goog-copy-source": "b/" + urllib.parse.quote("a/x.txt", safe="")})[0] == 200
        assert call("PUT", enc("a/y.txt"), headers={"x-goog-copy-source": "b/a/x.txt", "x-goog-if-generation-match": "0"})[0] == 412
        assert fake.objects("b") == {"a/x.txt": b"again", "a/y.txt": b"again"}
        st, _, data = call("POST", enc("big") + "?uploads")
        upload_id = ET.fromstring(data).find(f"{{{XMLNS}}}UploadId").text
        parts = [b"x" * MIN_PART, b"tail"]
        etags = [call("PUT", enc("big") + f"?partNumber={i + 1}&uploadId={upload_id}", p)[1]["ETag"] for i, p in enumerate(parts)]
        done = "<CompleteMultipartUpload>" + "".join(f"<Part><ETag>{e}</ETag><PartNumber>{i + 1}</PartNumber></Part>" for i, e in enumerate(etags)) + "</CompleteMultipartUpload>"
        st, h, data = call("POST", enc("big") + f"?uploadId={upload_id}", done.encode())
        assert st == 200 and fake.object("b", "big").parts == 2 and fake.object("b", "big").etag.endswith('-2"'), (st, data)
        st, _, data = call("POST", enc("small") + "?uploads")
        upload_id = ET.fromstring(data).find(f"{{{XMLNS}}}UploadId").text
        etags = [call("PUT", enc("small") + f"?partNumber={i + 1}&uploadId={upload_id}", p)[1]["ETag"] for i, p in enumerate([b"a", b"b"])]
        done = "<CompleteMultipartUpload>" + "".join(f"<Part><ETag>{e}</ETag><PartNumber>{i + 1}</PartNumber></Part>" for i, e in enumerate(etags)) + "</CompleteMultipartUpload>"
        assert call("POST", enc("small") + f"?uploadId={upload_id}", done.encode())[0] == 400, "parts under 5 MiB"
        assert call("DELETE", enc("small") + f"?uploadId={upload_id}")[0] == 204 and fake.uploads("b") == []
        for i in range(5):
            call("PUT", enc(f"a/d/{i}"), b"")
        keys, prefixes, token = [], [], None
        while True:
            st, _, data = call("GET", "/b?list-type=2&prefix=a%2F&delimiter=%2F" + (f"&continuation-token={token}" if token else ""))
            root = ET.fromstring(data)
            keys += [e.text for e in root.iter(f"{{{XMLNS}}}Key")]
            prefixes += [e.text for e in root.iter(f"{{{XMLNS}}}Prefix") if e.text != "a/"]
            t = root.find(f"{{{XMLNS}}}NextContinuationToken")
            if t is None:
                break
            token = urllib.parse.quote(t.text)
        assert (keys, prefixes) == (["a/x.txt", "a/y.txt"], ["a/d/"]), (keys, prefixes)
        assert call("DELETE", enc("a/x.txt"))[0] == 204 and call("DELETE", enc("a/x.txt"))[0] == 404
        assert call("GET", "/nob?list-type=2")[0] == 404
        now = int(time.time())
        assertion = sign({"iss": key["client_email"], "aud": fake.token_uri, "scope": "x", "iat": now, "exp": now + 3600})
        req = urllib.request.Request(fake.token_uri, method="POST", data=urllib.parse.urlencode(
            {"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer", "assertion": assertion}).encode())
        with urllib.request.urlopen(req, timeout=10) as r:
            tok = json.loads(r.read())
        assert tok["token_type"] == "Bearer" and tok["expires_in"] == 3600
        assert call("GET", enc("a/y.txt"), token=tok["access_token"])[0] == 200
        print("gcs_fake self-check passed:", dict(fake.ops()), dict(fake.auth))
    finally:
        fake.stop()


if __name__ == "__main__":
    _self_check()
