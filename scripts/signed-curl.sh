#!/usr/bin/env bash
# curl with a request signed under the cluster secret, as a node signs its calls to another
# (format: server/src/auth/request.rs): for internal and admin routes from a shell.
#
#   KVNODE_CLUSTER_SECRET_FILE=/etc/kvnode/secret scripts/signed-curl.sh METHOD URL BODY [curl options...]
#
# BODY is the request body as a string ('' for none). Needs openssl 3. The derived key (not the
# secret) shows in this machine's process list while openssl runs: use it on a trusted host.
set -euo pipefail
method=$1 url=$2 body=$3
shift 3
if [ -n "${KVNODE_CLUSTER_SECRET_FILE:-}" ]; then
  secret=$(cat "$KVNODE_CLUSTER_SECRET_FILE")
else
  secret=${KVNODE_CLUSTER_SECRET:?set KVNODE_CLUSTER_SECRET_FILE or KVNODE_CLUSTER_SECRET}
fi
# The node trims trailing white space from a secret file; $(cat) trims trailing newlines.
key=$(printf '%s' "$secret" | od -An -tx1 | tr -d ' \n')
key=$(openssl kdf -keylen 32 -kdfopt digest:SHA256 -kdfopt hexkey:"$key" \
  -kdfopt salt:kvnode-request-v1 -kdfopt info:http HKDF | tr -d ':\n')
target="/${url#*://*/}"
ts=$(date +%s%3N)
nonce=$(openssl rand -hex 16)
sender=signed-curl
sig=$({
  printf '%s\n' kvnode-request-v1 "$method" "$target" "$ts" "$nonce" "$sender"
  printf '%s' "$body" | openssl dgst -sha256 -binary
} | openssl dgst -sha256 -mac HMAC -macopt hexkey:"$key" -r | cut -d' ' -f1)
auth="Authorization: KVNODE-HMAC-SHA256 id=$sender, ts=$ts, nonce=$nonce, sig=$sig"
if [ -n "$body" ]; then
  exec curl -s -X "$method" -H "$auth" --data-binary "$body" "$@" "$url"
else
  exec curl -s -X "$method" -H "$auth" "$@" "$url"
fi
