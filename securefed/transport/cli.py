"""``securefed keys``: provision the federation CA and its server and client certificates."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    keys = subparsers.add_parser(
        "keys",
        help="create the federation CA and issue server/client certificates",
        description=(
            "Provision mutual-TLS credentials. Private keys are written with mode 0600. Client "
            "certificates also bind the client's Ed25519 identity key, which signs its round keys "
            "and privacy-ledger entries."
        ),
    )
    sub = keys.add_subparsers(dest="keys_command", metavar="ACTION", required=True)

    init = sub.add_parser("init-ca", help="create a new federation CA (ca.pem, ca.key) in --dir")
    init.add_argument("--dir", required=True, type=Path, help="credentials directory")
    init.add_argument("--force", action="store_true", help="replace an existing CA (invalidates issued certificates)")
    init.set_defaults(handler=_init_ca)

    server = sub.add_parser("issue-server", help="issue the coordinator's TLS certificate (server.pem, server.key)")
    server.add_argument("--dir", required=True, type=Path, help="credentials directory holding the CA")
    server.add_argument(
        "--host", action="append", default=None, metavar="HOST",
        help="IP address or DNS name clients dial (repeatable; default: 127.0.0.1 and localhost)",
    )
    server.add_argument("--force", action="store_true", help="replace an existing server certificate")
    server.set_defaults(handler=_issue_server)

    client = sub.add_parser(
        "issue-client", help="issue a client certificate and Ed25519 identity key (clients/NAME.*)"
    )
    client.add_argument("name", metavar="NAME", help="client id: 1-63 of a-z 0-9 - _")
    client.add_argument("--dir", required=True, type=Path, help="credentials directory holding the CA")
    client.add_argument("--force", action="store_true", help="reissue (new keys) if NAME already has a certificate")
    client.set_defaults(handler=_issue_client)


def _init_ca(args: argparse.Namespace) -> int:
    from securefed.transport import identity

    d = identity.init_ca(args.dir, force=args.force)
    print(f"federation CA written to {d.ca_cert} (private key {d.ca_key}, mode 0600)")
    return 0


def _issue_server(args: argparse.Namespace) -> int:
    from securefed.transport import identity

    hosts = args.host or ["127.0.0.1", "localhost"]
    d = identity.issue_server(args.dir, hosts, force=args.force)
    print(f"server certificate for {', '.join(hosts)} written to {d.server_cert} (key {d.server_key}, mode 0600)")
    return 0


def _issue_client(args: argparse.Namespace) -> int:
    from securefed.transport import identity

    d = identity.issue_client(args.dir, args.name, force=args.force)
    print(
        f"client {args.name}: certificate {d.client_cert(args.name)}, TLS key {d.client_key(args.name)}, "
        f"identity key {d.client_identity_key(args.name)} (keys mode 0600); "
        f"give the client these three files and {d.ca_cert}"
    )
    return 0
