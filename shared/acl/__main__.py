"""python -m shared.acl: the ACL files.

    python -m shared.acl secrets [--dir deploy/secrets]   make the missing password files (and
                                                          the gateway's API key file)
    python -m shared.acl template > deploy/redis/users.acl  regenerate compose's template
    python -m shared.acl render [--key-prefix P] [--dir deploy/secrets]
                                                          the filled-in ACL file (redis-server --aclfile)
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from shared.acl.deploy import check_prefix, create_gateway_keys, create_secrets, read_secrets, render, template

DEFAULT_SECRETS = Path("deploy/secrets")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m shared.acl", description="Redis ACL users of the services.")
    sub = parser.add_subparsers(dest="command", required=True)
    secrets = sub.add_parser("secrets", help="write a random password for every user that has none yet, "
                             "and a gateway API key file if there is none")
    secrets.add_argument("--dir", type=Path, default=DEFAULT_SECRETS, help=f"default: {DEFAULT_SECRETS}")
    sub.add_parser("template", help="print compose's ACL template (deploy/redis/users.acl)")
    rendered = sub.add_parser("render", help="print the ACL file for a prefix, with the secrets' password hashes")
    rendered.add_argument("--key-prefix", default=os.environ.get("KEY_PREFIX") or "vab",
                          help="default: $KEY_PREFIX, else vab")
    rendered.add_argument("--dir", type=Path, default=DEFAULT_SECRETS, help=f"default: {DEFAULT_SECRETS}")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "secrets":
            created = create_secrets(args.dir)
            keys = create_gateway_keys(args.dir)
            if keys is not None:
                created.append(keys)
            for path in created:
                print(f"created {path}")
            if not created:
                print(f"every password file is in {args.dir} already")
        elif args.command == "template":
            sys.stdout.write(template())
        else:
            sys.stdout.write(render(check_prefix(args.key_prefix), read_secrets(args.dir)))
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
