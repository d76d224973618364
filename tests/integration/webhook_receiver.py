"""A webhook receiver for the `webhook` connector's tests: a threaded HTTP/HTTPS
server on 127.0.0.1 (standard library only) that records every request and keeps
the accepted ones the way a careful receiver would: deduplicated by
Idempotency-Key.

* `requests`: every request that was read completely (method, path, headers, raw
  body, arrival time, the status answered), failed ones included.
* `accepted`: the requests answered 2xx, in arrival order, each once: a repeated
  Idempotency-Key with the same body is acknowledged (200) but not kept again
  (`duplicates` counts them). A repeated key with a *different* body is a protocol
  violation; it is noted in `violations` and the request is kept anyway, so that
  the data checks still see every record.
* Behaviour a test can program: `fail_next(500, 500, 429)` answers the next
  requests with those statuses; `answer_always(400, "why")` answers every request
  with a fixed status until `answer_always(None)`; `refuse_containing(b"x", 422)`
  answers every request whose body holds those bytes with that status (None:
  stop); `bearer_token` or `basic`
  (user, password) make requests without them get 401; `signing_secret` checks
  `Pg-Sink-Signature` on every request (`reject_bad_signature` answers 401 to a
  wrong one); `delay` holds each answer back.
* `stop()` takes the server down (listening socket and open connections closed),
  `start()` brings it back on the same port with everything recorded kept.
* TLS: `make_tls_files(dir)` creates a CA and a server certificate for 127.0.0.1
  and localhost with the `openssl` command; `Receiver(port, tls=files)` serves
  HTTPS with it, and `files.ca_pem` is the text to give the sink as `ssl_ca`.
  Failed handshakes are listed in `tls_errors`.

Run this file directly for a self-check (plain HTTP, HTTPS, dedupe, failures)."""
import base64
import collections
import dataclasses
import gzip
import hashlib
import hmac
import http.server
import json
import os
import shutil
import socket
import ssl
import subprocess
import threading
import time


def signature(secret, body):
    """The value of Pg-Sink-Signature for a body: sha256=<hex HMAC-SHA256>."""
    key = secret.encode() if isinstance(secret, str) else secret
    return "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()


def signature_ok(secret, body, header):
    return header is not None and hmac.compare_digest(signature(secret, body), header.strip())


def lsn_int(text):
    """'X/X' -> int."""
    hi, lo = text.split("/")
    return (int(hi, 16) << 32) | int(lo, 16)


def lsn_hex16(text):
    """'X/X' -> 16 upper-case hex digits, as in Idempotency-Key."""
    return "%016X" % lsn_int(text)


def parse_body(content_type, body):
    """Records of a body: a JSON array (application/json) or one JSON document per
    line (application/x-ndjson). Raises ValueError for anything else."""
    ctype = (content_type or "").split(";")[0].strip().lower()
    text = body.decode("utf-8")
    if ctype == "application/x-ndjson":
        return [json.loads(line) for line in text.split("\n") if line.strip()]
    if ctype == "application/json":
        doc = json.loads(text)
        if not isinstance(doc, list):
            raise ValueError("a JSON body must be an array of records")
        return doc
    raise ValueError(f"unexpected Content-Type {content_type!r}")


@dataclasses.dataclass
class Request:
    method: str
    path: str
    headers: dict  # lower-case name -> value (last one wins)
    header_list: list  # (name, value) as sent
    body: bytes
    time: float
    status: int = 0
    records: list = None  # parsed body, for accepted requests
    signature_ok: bool = None  # None: no signing secret configured
    duplicate: bool = False

    def header(self, name, default=None):
        return self.headers.get(name.lower(), default)

    @property
    def key(self):
        return self.header("Idempotency-Key")


class TlsFiles:
    def __init__(self, directory):
        self.directory = directory
        self.ca_cert = os.path.join(directory, "ca.pem")
        self.cert = os.path.join(directory, "server.pem")
        self.key = os.path.join(directory, "server.key")

    @property
    def ca_pem(self):
        with open(self.ca_cert) as f:
            return f.read()


def make_tls_files(directory, hosts=("IP:127.0.0.1", "DNS:localhost")):
    """A self-signed CA and a server certificate it signed (for `hosts`), written
    with the openssl command line tool into `directory`."""
    if not shutil.which("openssl"):
        raise RuntimeError("the openssl command is not installed (Debian: apt-get install openssl)")
    os.makedirs(directory, exist_ok=True)
    files = TlsFiles(directory)

    def run(*args):
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)

    ca_key = os.path.join(directory, "ca.key")
    csr = os.path.join(directory, "server.csr")
    ext = os.path.join(directory, "server.ext")
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", ca_key, "-out", files.ca_cert, "-days", "3",
        "-subj", "/CN=pg_sink test CA", "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", files.key, "-out", csr, "-subj", "/CN=127.0.0.1")
    with open(ext, "w") as f:
        f.write("basicConstraints=critical,CA:FALSE\n"
                "keyUsage=critical,digitalSignature,keyEncipherment\n"
                "extendedKeyUsage=serverAuth\n"
                "subjectKeyIdentifier=hash\n"
                "authorityKeyIdentifier=keyid,issuer\n"
                f"subjectAltName={','.join(hosts)}\n")
    run("x509", "-req", "-in", csr, "-CA", files.ca_cert, "-CAkey", ca_key, "-set_serial", str(int.from_bytes(os.urandom(8), "big")),
        "-days", "3", "-sha256", "-extfile", ext, "-out", files.cert)
    return files


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, receiver):
        self.receiver = receiver
        super().__init__(("127.0.0.1", receiver.port), _Handler)

    def process_request(self, request, client_address):
        self.receiver._track(request, True)
        super().process_request(request, client_address)

    def finish_request(self, request, client_address):
        rcv = self.receiver
        sock = request
        try:
            if rcv.tls_context is not None:
                request.settimeout(10)
                try:
                    sock = rcv.tls_context.wrap_socket(request, server_side=True)
                except (ssl.SSLError, OSError) as e:
                    with rcv.lock:
                        rcv.tls_errors.append(f"{type(e).__name__}: {e}")
                    return
                rcv._track(request, False)
                rcv._track(sock, True)
                sock.settimeout(None)
            _Handler(sock, client_address, self)
        finally:
            rcv._track(sock, False)
            if sock is not request:
                try:
                    sock.close()
                except OSError:
                    pass

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

    def _answer(self, status, text="", extra=()):
        data = text.encode() if isinstance(text, str) else text
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        for k, v in extra:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()

    def _handle(self):
        body = self._read_body()
        if body is None:  # the client went away mid-request: nothing was received
            self.close_connection = True
            return
        if self.headers.get("Content-Encoding", "").lower() == "gzip":
            body = gzip.decompress(body)
        req = Request(method=self.command, path=self.path, headers={k.lower(): v for k, v in self.headers.items()},
                      header_list=list(self.headers.items()), body=body, time=time.time())
        status, text, extra = self.server.receiver._decide(req)
        if self.server.receiver.delay:
            time.sleep(self.server.receiver.delay)
        self._answer(status, text, extra)

    do_POST = do_PUT = do_PATCH = _handle

    def do_GET(self):
        self._answer(200, "pg_sink test receiver\n")


class Receiver:
    def __init__(self, port, tls=None, bearer_token=None, basic=None, signing_secret=None, reject_bad_signature=False):
        self.port = port
        self.tls = tls
        self.tls_context = None
        if tls is not None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(tls.cert, tls.key)
            self.tls_context = ctx
        self.bearer_token = bearer_token
        self.basic = basic
        self.signing_secret = signing_secret
        self.reject_bad_signature = reject_bad_signature
        self.delay = 0.0
        self.lock = threading.Lock()
        self.requests = []
        self.accepted = []
        self.violations = []
        self.tls_errors = []
        self.duplicates = 0
        self._bodies = {}  # Idempotency-Key -> {sha256 of body}
        self._failures = collections.deque()
        self._always = None
        self._server = None
        self._thread = None
        self._conns = set()

    # -- control ----------------------------------------------------------------
    @property
    def scheme(self):
        return "https" if self.tls else "http"

    def url(self, path="/hook"):
        return f"{self.scheme}://127.0.0.1:{self.port}{path}"

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
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        self._thread.start()
        return self

    def stop(self):
        """Close the listening socket and every open connection: clients get
        refused until start()."""
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

    @property
    def running(self):
        return self._server is not None

    def fail_next(self, *statuses, body="injected failure"):
        """Answer the next requests with these statuses (one each)."""
        with self.lock:
            self._failures.extend((s, body) for s in statuses)

    def refuse_containing(self, needle, status=422):
        """Answer `status` to every request whose body contains `needle` (None: stop)."""
        with self.lock:
            self._refuse = None if needle is None else (needle, status)

    def answer_always(self, status, body=""):
        """Answer every request with `status` (None: back to normal)."""
        with self.lock:
            self._always = None if status is None else (status, body)

    # -- what was received ---------------------------------------------------------
    def accepted_for(self, path=None, sink=None):
        with self.lock:
            return [r for r in self.accepted
                    if (path is None or r.path == path) and (sink is None or r.header("Pg-Sink-Name") == sink)]

    def records(self, path=None, sink=None):
        """Records of the accepted requests, in arrival order."""
        return [rec for r in self.accepted_for(path, sink) for rec in r.records]

    def requests_for(self, path=None):
        with self.lock:
            return [r for r in self.requests if path is None or r.path == path]

    # -- internals -------------------------------------------------------------------
    def _track(self, sock, add):
        with self.lock:
            if add:
                self._conns.add(sock)
            else:
                self._conns.discard(sock)

    def _authorized(self, req):
        auth = req.header("Authorization") or ""
        if self.bearer_token is not None and auth != f"Bearer {self.bearer_token}":
            return False
        if self.basic is not None:
            want = "Basic " + base64.b64encode(f"{self.basic[0]}:{self.basic[1]}".encode()).decode()
            if auth != want:
                return False
        return True

    def _decide(self, req):
        """Status, text and extra headers for a request; records it."""
        with self.lock:
            self.requests.append(req)
            if self.signing_secret is not None:
                req.signature_ok = signature_ok(self.signing_secret, req.body, req.header("Pg-Sink-Signature"))
            if not self._authorized(req):
                req.status = 401
                return 401, "missing or wrong credentials", [("WWW-Authenticate", 'Bearer realm="pg_sink-test"')]
            if self._always is not None:
                req.status, text = self._always
                return req.status, text, []
            if self._failures:
                req.status, text = self._failures.popleft()
                extra = [("Retry-After", "1")] if req.status in (429, 503) else []
                return req.status, text, extra
            refuse = getattr(self, "_refuse", None)
            if refuse is not None and refuse[0] in req.body:
                req.status = refuse[1]
                return req.status, "record refused by the receiver", []
            if self.reject_bad_signature and req.signature_ok is False:
                req.status = 401
                return 401, "bad signature", []
            try:
                req.records = parse_body(req.header("Content-Type"), req.body)
            except (ValueError, UnicodeDecodeError) as e:
                self.violations.append(f"unparsable body ({e}) in request with key {req.key!r}")
                req.status = 400
                return 400, f"receiver could not parse the body: {e}", []
            digest = hashlib.sha256(req.body).hexdigest()
            key = req.key
            if key is None:
                self.violations.append(f"request without Idempotency-Key to {req.path}")
            else:
                seen = self._bodies.setdefault(key, set())
                if digest in seen:
                    req.duplicate = True
                    self.duplicates += 1
                    req.status = 200
                    return 200, "duplicate", []
                if seen:
                    self.violations.append(f"Idempotency-Key {key} reused with a different body")
                seen.add(digest)
            req.status = 200
            self.accepted.append(req)
            return 200, "ok", []


def free_port(start=18100, end=18199, taken=()):
    """A port in [start, end] nothing listens on (and that binds)."""
    for port in range(start, end + 1):
        if port in taken:
            continue
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError(f"no free port in {start}-{end}")


def _self_check():
    import tempfile
    import urllib.error
    import urllib.request

    def post(url, body, headers, ctx=None):
        req = urllib.request.Request(url, data=body, method="POST", headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=10, context=ctx) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    recs = [{"key": {"id": 1}, "value": {"id": 1}, "headers": {"pg_sink-lsn": "0/16B3748", "pg_sink-timestamp": "1", "pg_sink-op": "insert"}}]
    body = json.dumps(recs).encode()
    hdr = {"Content-Type": "application/json", "Idempotency-Key": "db-1-2:00000000016B3748-00000000016B3748",
           "Pg-Sink-Signature": signature("s3cret", body), "Authorization": "Bearer tok"}
    port = free_port()
    r = Receiver(port, bearer_token="tok", signing_secret="s3cret").start()
    try:
        assert post(r.url(), body, {**hdr, "Authorization": "Bearer nope"})[0] == 401
        r.fail_next(500, 429)
        assert post(r.url(), body, hdr)[0] == 500
        assert post(r.url(), body, hdr)[0] == 429
        assert post(r.url(), body, hdr) == (200, "ok")
        assert post(r.url(), body, hdr) == (200, "duplicate")
        nd = b"\n".join(json.dumps(x).encode() for x in recs * 2) + b"\n"
        assert post(r.url("/nd"), nd, {**hdr, "Content-Type": "application/x-ndjson", "Idempotency-Key": "k2",
                                       "Pg-Sink-Signature": signature("s3cret", nd)})[0] == 200
        assert len(r.accepted) == 2 and r.duplicates == 1 and len(r.records()) == 3 and len(r.records("/nd")) == 2
        assert all(q.signature_ok for q in r.accepted)
        assert post(r.url(), b"[]", hdr)[0] == 200  # same key, other body
        assert len(r.violations) == 1, r.violations
        r.answer_always(400, "nope: " + "x" * 10)
        assert post(r.url(), body, hdr) == (400, "nope: " + "x" * 10)
        r.answer_always(None)
        # Down and back on the same port, with a keep-alive connection open.
        import http.client
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        c.request("POST", "/ka", body=body, headers={**hdr, "Idempotency-Key": "k3"})
        assert c.getresponse().read() == b"ok"
        r.stop()
        try:
            c.request("POST", "/ka", body=body, headers={**hdr, "Idempotency-Key": "k4"})
            c.getresponse().read()
            raise AssertionError("a stopped receiver answered on a kept-alive connection")
        except (ConnectionError, http.client.HTTPException, OSError):
            pass
        try:
            post(r.url(), body, hdr)
            raise AssertionError("a stopped receiver answered")
        except urllib.error.URLError as e:
            assert isinstance(e.reason, ConnectionRefusedError), e
        r.start()
        assert post(r.url(), body, hdr) == (200, "duplicate")
    finally:
        r.stop()
    # TLS with a generated CA.
    with tempfile.TemporaryDirectory() as d:
        files = make_tls_files(d)
        r = Receiver(free_port(), tls=files).start()
        try:
            ctx = ssl.create_default_context(cadata=files.ca_pem)
            assert post(r.url(), body, hdr, ctx)[0] == 200
            ctx_l = ssl.create_default_context(cadata=files.ca_pem)
            assert post(f"https://localhost:{r.port}/hook", body, {**hdr, "Idempotency-Key": "k9"}, ctx_l)[0] == 200
            try:
                post(r.url(), body, hdr, ssl.create_default_context())
                raise AssertionError("an untrusted certificate was accepted")
            except urllib.error.URLError as e:
                assert isinstance(e.reason, ssl.SSLCertVerificationError), e
            time.sleep(0.2)
            assert any("alert" in e.lower() for e in r.tls_errors), r.tls_errors
            socket.create_connection(("127.0.0.1", r.port)).close()  # a bare TCP probe
            time.sleep(0.2)
            assert len(r.accepted) == 2
        finally:
            r.stop()
    print("webhook_receiver self-check passed")


if __name__ == "__main__":
    _self_check()
