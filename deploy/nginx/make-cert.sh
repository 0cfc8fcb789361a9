#!/usr/bin/env bash
# Makes a self-signed certificate for local use of deploy/compose.yaml (and for `nginx -t` in CI):
#   deploy/nginx/make-cert.sh [DIR] [HOSTNAME]     (default: deploy/nginx/certs, localhost)
# writes DIR/coinpay.crt and DIR/coinpay.key (RSA 2048, 30 days). WeChat Pay needs a certificate
# from a public CA on the notify URL's host: never use this one in production.
set -euo pipefail
dir=${1:-$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/certs}
host=${2:-localhost}
command -v openssl >/dev/null || { echo "make-cert.sh: openssl is not installed (apt-get install openssl)" >&2; exit 1; }
mkdir -p "$dir"
umask 077
openssl req -x509 -newkey rsa:2048 -nodes -days 30 \
  -keyout "$dir/coinpay.key" -out "$dir/coinpay.crt" \
  -subj "/CN=$host" -addext "subjectAltName=DNS:$host,IP:127.0.0.1" 2>/dev/null
chmod 0644 "$dir/coinpay.crt"
echo "wrote $dir/coinpay.crt and $dir/coinpay.key (CN=$host, self-signed, 30 days)"
