#!/bin/sh
# Make a private CA and one TLS certificate per broker name, for the cluster brokers
# (docs/broker.md, "TLS"; docker-compose.tls.yml; helm broker.tls).
#
#   scripts/make-broker-certs.sh DIR NAME [NAME...]
#
# DIR/ca.key, DIR/ca.pem: the CA (created once, kept on re-runs; keep ca.key offline).
# DIR/NAME/tls.crt, tls.key, ca.crt: a certificate for NAME signed by the CA, and a copy
# of the CA certificate. The subjectAltName holds NAME, plus every entry of
# $EXTRA_SANS (e.g. EXTRA_SANS="DNS:mqtt.example.org,IP:203.0.113.7": the address the
# nodes dial). $DAYS sets the validity (default 825 days). $KEY_OWNER chowns tls.key
# (as root; 1883 for the eclipse-mosquitto image). Needs the openssl command.
set -eu

if [ "$#" -lt 2 ]; then
    echo "usage: $0 DIR NAME [NAME...]" >&2
    exit 2
fi
dir=$1
shift
days=${DAYS:-825}
umask 077
mkdir -p "$dir"
chmod 755 "$dir"

if [ ! -f "$dir/ca.pem" ]; then
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
        -keyout "$dir/ca.key" -out "$dir/ca.pem" -subj "/CN=edge broker CA" \
        -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
fi

for name in "$@"; do
    case "$name" in
        *[!A-Za-z0-9.-]* | "") echo "$0: invalid name: $name" >&2; exit 2 ;;
    esac
    out="$dir/$name"
    mkdir -p "$out"
    sans="DNS:$name"
    if [ -n "${EXTRA_SANS:-}" ]; then
        sans="$sans,$EXTRA_SANS"
    fi
    printf 'subjectAltName=%s\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n' \
        "$sans" > "$out/ext.cnf"
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
        -keyout "$out/tls.key" -out "$out/tls.csr" -subj "/CN=$name" 2>/dev/null
    openssl x509 -req -in "$out/tls.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" \
        -CAcreateserial -days "$days" -out "$out/tls.crt" -extfile "$out/ext.cnf" 2>/dev/null
    cp "$dir/ca.pem" "$out/ca.crt"
    rm -f "$out/tls.csr" "$out/ext.cnf"
    # certificates are public; the key stays private (give it to the broker's user)
    chmod 755 "$out"
    chmod 644 "$out/tls.crt" "$out/ca.crt"
    chmod 600 "$out/tls.key"
    if [ -n "${KEY_OWNER:-}" ]; then
        chown "$KEY_OWNER" "$out/tls.key"
    fi
    echo "$out: tls.crt tls.key ca.crt ($sans)"
done
