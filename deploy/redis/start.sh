#!/bin/sh
# Compose's Redis: fills in deploy/redis/users.acl (the key prefix from KEY_PREFIX, each
# user's password hash from its secret /run/secrets/redis_<user>), then runs redis-server
# with it and the arguments given. The filled-in file holds sha256 hashes only, in a tmpfs;
# it is what `ACL LOAD` re-reads. Python renders the same file (shared/acl/deploy.py), and
# tests/test_redis_acl.py checks that the two agree.
set -eu

template="${ACL_TEMPLATE:-/etc/redis/users.acl}"
secrets="${ACL_SECRETS_DIR:-/run/secrets}"
rendered="${ACL_RENDERED:-/tmp/users.acl}"
prefix="${KEY_PREFIX:-vab}"

case "$prefix" in
  "" | *[!A-Za-z0-9_.-]*)
    echo "start.sh: KEY_PREFIX must be 1-32 of A-Za-z0-9_.-" >&2
    exit 2 ;;
esac
if [ "${#prefix}" -gt 32 ]; then
  echo "start.sh: KEY_PREFIX must be 1-32 of A-Za-z0-9_.-" >&2
  exit 2
fi

# One sed script: the prefix, then one substitution per secret. A password is its file's
# content without trailing newlines ($(cat) drops them), as shared.acl.deploy reads it.
script="s/@KEY_PREFIX@/$prefix/g"
for secret in "$secrets"/redis_*; do
  [ -f "$secret" ] || continue
  user="${secret##*/redis_}"
  password="$(cat "$secret")"
  if [ -z "$password" ]; then
    echo "start.sh: $secret holds no password" >&2
    exit 2
  fi
  hash="$(printf '%s' "$password" | sha256sum | cut -d ' ' -f 1)"
  script="$script;s/@PASSWORD_SHA256:$user@/$hash/"
done

umask 077
sed "$script" "$template" > "$rendered"
missing="$(grep -o '@PASSWORD_SHA256:[a-z0-9_-]*@' "$rendered" | sed 's/@PASSWORD_SHA256:\(.*\)@/\1/' | tr '\n' ' ' || true)"
if [ -n "$missing" ]; then
  echo "start.sh: no password secret for: $missing(run: python3 -m shared.acl secrets)" >&2
  exit 2
fi

exec redis-server "$@" --aclfile "$rendered"
