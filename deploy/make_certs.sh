#!/usr/bin/env bash
# Make a private CA, a TLS server certificate signed by it, a random bearer
# token (for the standalone diffusion guidance service), and optionally the
# SuperNode authentication key pairs. The Flower SuperLink and the guidance
# service take the same CA + server cert + key.
#
#   deploy/make_certs.sh [-s SANS] [-d DAYS] [-n NAME] [-N NODES] [-K TOOL] [-f] OUT_DIR
#
#   -s SANS  comma list of DNS names / IP addresses the server certificate is
#            valid for (default: localhost,127.0.0.1); IPs become IP: entries.
#            List every name or address clients dial (SuperLink host, service).
#   -d DAYS  validity of both certificates (default 365).
#   -n NAME  base name of the server files (default: server).
#   -N NODES also make NODES SuperNode key pairs (ECDSA P-384, OpenSSH format)
#            supernode_credentials_0 .. _<NODES-1> (+ .pub); default 0.
#   -K TOOL  how to make the node keys: auto (default: python with the
#            cryptography package, which Flower needs anyway, else ssh-keygen),
#            python, or ssh-keygen. Python is $PYTHON or python3.
#   -f       overwrite existing files (otherwise refuse).
#
# Writes into OUT_DIR (created with mode 700):
#   ca.crt, ca.key            the CA (ECDSA P-256); ca.key mode 600
#   NAME.pem, NAME.key        the server certificate and key; key mode 600
#   token                     64 hex characters (256 bits), mode 600
#   supernode_credentials_<i>[.pub]  node key pairs (-N); private keys mode 600
# Needs openssl (1.1.1 or 3.x). Prints what it wrote; exits non-zero on error.
set -euo pipefail

usage() { sed -n '2,27p' "$0" | sed 's/^# \{0,1\}//'; }
die() { echo "make_certs.sh: error: $*" >&2; exit 2; }

sans="localhost,127.0.0.1"; days=365; name="server"; force=0; nodes=0; keygen=auto
while getopts ":s:d:n:N:K:fh" opt; do
  case "$opt" in
    s) sans="$OPTARG" ;;
    d) days="$OPTARG" ;;
    n) name="$OPTARG" ;;
    N) nodes="$OPTARG" ;;
    K) keygen="$OPTARG" ;;
    f) force=1 ;;
    h) usage; exit 0 ;;
    :) die "-$OPTARG needs a value (see -h)" ;;
    *) die "unknown option -$OPTARG (see -h)" ;;
  esac
done
shift $((OPTIND - 1))
[ $# -eq 1 ] || { usage >&2; die "give exactly one OUT_DIR"; }
out="$1"
command -v openssl >/dev/null || die "openssl not found (apt-get install openssl)"
[[ "$days" =~ ^[1-9][0-9]*$ ]] || die "-d must be a positive integer, got '$days'"
[[ "$name" =~ ^[A-Za-z0-9._-]+$ ]] || die "-n must be a plain file name, got '$name'"
[[ "$nodes" =~ ^[0-9]+$ ]] || die "-N must be a whole number, got '$nodes'"

# Pick the node key tool now, so a missing one fails before anything is made.
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
py="${PYTHON:-python3}"
has_py_crypto() { command -v "$py" >/dev/null && "$py" -c 'import cryptography' 2>/dev/null; }
if [ "$nodes" -gt 0 ]; then
  case "$keygen" in
    auto) if has_py_crypto; then keygen=python
          elif command -v ssh-keygen >/dev/null; then keygen=ssh-keygen
          else die "-N needs python3 with 'cryptography' (pip install cryptography) or ssh-keygen (apt-get install openssh-client)"; fi ;;
    python) has_py_crypto || die "-K python: '$py' cannot import cryptography (pip install cryptography, or set PYTHON)" ;;
    ssh-keygen) command -v ssh-keygen >/dev/null || die "-K ssh-keygen: ssh-keygen not found (apt-get install openssh-client)" ;;
    *) die "-K must be auto, python or ssh-keygen, got '$keygen'" ;;
  esac
fi

# Build the subjectAltName list: IPv4/IPv6 literals as IP:, the rest as DNS:.
san_ext=""; first_dns=""; first_any=""
IFS=',' read -ra entries <<< "$sans"
for e in "${entries[@]}"; do
  e="$(echo "$e" | xargs)"  # trim surrounding blanks only
  [ -n "$e" ] || continue
  first_any="${first_any:-$e}"
  if [[ "$e" =~ ^[0-9]+(\.[0-9]+){3}$ || "$e" =~ ^[0-9A-Fa-f:]+:[0-9A-Fa-f:.]*$ ]]; then
    san_ext+="${san_ext:+,}IP:$e"
  elif [[ "$e" =~ ^[A-Za-z0-9*]([A-Za-z0-9.-]*[A-Za-z0-9])?$ ]]; then
    san_ext+="${san_ext:+,}DNS:$e"; first_dns="${first_dns:-$e}"
  else
    die "'$e' is neither a DNS name nor an IP address"
  fi
done
[ -n "$san_ext" ] || die "-s gave no names or addresses"

files=(ca.crt ca.key "$name.pem" "$name.key" token)
for ((i = 0; i < nodes; i++)); do
  files+=("supernode_credentials_$i" "supernode_credentials_$i.pub")
done
if [ "$force" -eq 0 ]; then
  for f in "${files[@]}"; do
    [ ! -e "$out/$f" ] || die "$out/$f exists (use -f to overwrite)"
  done
fi

umask 077
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
# Run openssl quietly, but show its messages if it fails.
ossl() { openssl "$@" 2>"$work/err" || { cat "$work/err" >&2; die "openssl $1 failed"; }; }
# Everything is made in $work first: a failure leaves OUT_DIR untouched.
ossl ecparam -name prime256v1 -genkey -noout -out "$work/ca.key"
ossl req -x509 -new -key "$work/ca.key" -sha256 -days "$days" \
  -subj "/O=SemanticFL/CN=SemanticFL CA" \
  -addext "basicConstraints=critical,CA:TRUE" \
  -addext "keyUsage=critical,keyCertSign,cRLSign" \
  -out "$work/ca.crt"

ossl ecparam -name prime256v1 -genkey -noout -out "$work/sec1.key"
ossl pkcs8 -topk8 -nocrypt -in "$work/sec1.key" -out "$work/$name.key"
ossl req -new -key "$work/$name.key" \
  -subj "/O=SemanticFL/CN=${first_dns:-$first_any}" -out "$work/server.csr"
cat > "$work/ext.cnf" <<CNF
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=$san_ext
CNF
ossl x509 -req -in "$work/server.csr" -CA "$work/ca.crt" -CAkey "$work/ca.key" \
  -CAcreateserial -CAserial "$work/ca.srl" -days "$days" -sha256 \
  -extfile "$work/ext.cnf" -out "$work/$name.pem"
ossl rand -out "$work/token" -hex 32
ossl verify -CAfile "$work/ca.crt" "$work/$name.pem" >/dev/null

# SuperNode keys: Flower loads them with cryptography's OpenSSH loaders, and
# both tools write that format (ssh-keygen's default since OpenSSH 7.8).
if [ "$nodes" -gt 0 ]; then
  if [ "$keygen" = python ]; then
    "$py" "$here/node_keys.py" "$work" "$nodes" >/dev/null 2>"$work/err" \
      || { cat "$work/err" >&2; die "node_keys.py failed"; }
  else
    for ((i = 0; i < nodes; i++)); do
      ssh-keygen -q -t ecdsa -b 384 -N "" -C "supernode-$i" \
        -f "$work/supernode_credentials_$i" 2>"$work/err" \
        || { cat "$work/err" >&2; die "ssh-keygen failed"; }
    done
  fi
fi

mkdir -p "$out"
chmod 700 "$out"
for f in "${files[@]}"; do mv -f "$work/$f" "$out/$f"; done
chmod 600 "$out/ca.key" "$out/$name.key" "$out/token"
chmod 644 "$out/ca.crt" "$out/$name.pem"
echo "wrote $out/{ca.crt,ca.key,$name.pem,$name.key,token} (SANs: $san_ext)"
if [ "$nodes" -gt 0 ]; then
  for ((i = 0; i < nodes; i++)); do
    chmod 600 "$out/supernode_credentials_$i"
    chmod 644 "$out/supernode_credentials_$i.pub"
  done
  echo "wrote $nodes SuperNode key pair(s) ($keygen): $out/supernode_credentials_{0..$((nodes - 1))}{,.pub}"
fi
