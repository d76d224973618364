# Test certificates, shared by the scripts that start TLS servers (kafka.sh,
# apicurio.sh, mariadb.sh) and by the TLS tests. Source it with $TLS set to a
# directory, or run it: `bash scripts/lib/tls.sh DIR` makes the standard set in DIR
# (kept when present):
#   ca.pem/key        the test CA
#   other-ca.pem/key  an unrelated CA (for "wrong authority" tests)
#   server.pem/key    signed by ca, for IP:127.0.0.1 and DNS:localhost
#   elsewhere.pem/key signed by ca, for DNS:elsewhere.example only (wrong host)
#
#   mkcert NAME CN               -> NAME.pem, NAME.key (a CA)
#   mkcert NAME CN CA EXTENSIONS -> NAME.pem, NAME.key signed by CA.pem/CA.key
# Keys are EC P-256, certificates valid ten years.

mkcert() {
  local name=$1 cn=$2 ca=${3:-} ext=${4:-}
  if [ -z "$ca" ]; then
    openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
      -keyout "$TLS/$name.key" -out "$TLS/$name.pem" -days 3650 -subj "/O=pg_sink tests/CN=$cn" \
      -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null
  else
    printf '%b\n' "$ext" >"$TLS/$name.ext"
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
      -keyout "$TLS/$name.key" -out "$TLS/$name.csr" -subj "/O=pg_sink tests/CN=$cn" 2>/dev/null
    openssl x509 -req -in "$TLS/$name.csr" -CA "$TLS/$ca.pem" -CAkey "$TLS/$ca.key" \
      -set_serial "0x$(openssl rand -hex 16)" -days 3650 -extfile "$TLS/$name.ext" \
      -out "$TLS/$name.pem" 2>/dev/null
    rm -f "$TLS/$name.csr" "$TLS/$name.ext"
  fi
}

# Extensions of a server certificate for the given subjectAltName.
tls_server_ext() {
  printf 'basicConstraints=critical,CA:FALSE\\nkeyUsage=critical,digitalSignature\\nextendedKeyUsage=serverAuth\\nsubjectAltName=%s' "$1"
}

tls_make_set() {
  TLS=$1
  command -v openssl >/dev/null 2>&1 || { echo "openssl is not on PATH" >&2; return 1; }
  [ -s "$TLS/elsewhere.pem" ] && return 0
  mkdir -p "$TLS"
  mkcert ca "pg_sink test CA"
  mkcert other-ca "pg_sink unrelated test CA"
  mkcert server localhost ca "$(tls_server_ext IP:127.0.0.1,DNS:localhost)"
  mkcert elsewhere elsewhere.example ca "$(tls_server_ext DNS:elsewhere.example)"
  chmod 600 "$TLS"/*.key
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  set -euo pipefail
  [ $# -eq 1 ] || { echo "usage: $0 DIR" >&2; exit 2; }
  tls_make_set "$1"
fi
