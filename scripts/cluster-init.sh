#!/usr/bin/env bash
# Creates everything a secured cluster needs, in one command (docs/security.md):
#
#   scripts/cluster-init.sh DIR [NODES]      (NODES: default 5)
#
#   DIR/keyring                  the gossip keyring: one new random key (--gossip-keyring)
#   DIR/ca.crt, ca.key           a small CA for the RPC port (ca.key: keep it offline)
#   DIR/node-N.crt, node-N.key   node certificates: CN peer:node-N, DNS throttlex-node and node-N
#                                (--tls-ca DIR/ca.crt --tls-cert DIR/node-N.crt --tls-key ...)
#   DIR/node.crt, node.key       one certificate every node may share (CN peer:node, DNS
#                                throttlex-node): for a Kubernetes StatefulSet's one Secret
#   DIR/admin.crt, admin.key     an operator's certificate: CN admin:operator (throttlectl)
#   DIR/client.crt, client.key   an application's certificate: CN client:app (checks only)
#
# EC P-256 keys, SHA-256 signatures; the CA is valid 10 years, the others 2. Files that exist are
# kept (run it again after adding nodes, or delete a file to re-issue it). Private keys and the
# keyring are created mode 600. Needs only openssl.
set -euo pipefail

dir=${1:?usage: scripts/cluster-init.sh DIR [NODES]}
nodes=${2:-5}
[[ $nodes =~ ^[0-9]+$ ]] && ((nodes >= 1 && nodes <= 1000)) || {
  echo "cluster-init.sh: NODES must be 1 to 1000, got '$nodes'" >&2
  exit 2
}
command -v openssl >/dev/null || { echo "cluster-init.sh: openssl is missing" >&2; exit 1; }
umask 077
mkdir -p "$dir"
cd "$dir"

if [[ ! -s keyring ]]; then
  openssl rand -base64 32 >keyring
  echo "cluster-init.sh: created $dir/keyring"
fi

if [[ ! -s ca.key || ! -s ca.crt ]]; then
  openssl ecparam -name prime256v1 -genkey -noout -out ca.key
  openssl req -x509 -new -key ca.key -sha256 -days 3650 -subj "/CN=ThrottleX cluster CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -out ca.crt 2>/dev/null
  echo "cluster-init.sh: created $dir/ca.crt (and ca.key: keep it off the nodes)"
fi

# issue NAME CN EXTENDED-KEY-USAGE [SUBJECT-ALT-NAMES]
issue() {
  local name=$1 cn=$2 eku=$3 san=${4:-}
  [[ -s $name.key && -s $name.crt ]] && return 0
  local ext
  ext=$(mktemp)
  {
    echo "basicConstraints=critical,CA:FALSE"
    echo "keyUsage=critical,digitalSignature"
    echo "extendedKeyUsage=$eku"
    [[ -z $san ]] || echo "subjectAltName=$san"
  } >"$ext"
  openssl ecparam -name prime256v1 -genkey -noout -out "$name.key"
  openssl req -new -key "$name.key" -subj "/CN=$cn" -out "$name.csr" 2>/dev/null
  openssl x509 -req -in "$name.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -sha256 -days 730 \
    -extfile "$ext" -out "$name.crt" 2>/dev/null
  rm -f "$name.csr" "$ext"
  chmod 644 "$name.crt"
  echo "cluster-init.sh: issued $dir/$name.crt ($cn)"
}

chmod 644 ca.crt
for ((i = 1; i <= nodes; i++)); do
  issue "node-$i" "peer:node-$i" "serverAuth,clientAuth" "DNS:throttlex-node,DNS:node-$i"
done
issue node "peer:node" "serverAuth,clientAuth" "DNS:throttlex-node"
issue admin "admin:operator" "clientAuth"
issue client "client:app" "clientAuth"
