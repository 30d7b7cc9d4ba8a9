"""``securefed keys``: the federation CA, its certificates, its revocation list, and one file per member."""

from __future__ import annotations

import argparse
from pathlib import Path
from types import ModuleType

_DAYS_HELP = "validity in days (default: {}); at most 3650"


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    keys = subparsers.add_parser(
        "keys",
        help="the federation CA: certificates, revocation, one bundle per member",
        description=(
            "Provision mutual-TLS credentials. Private keys are written with mode 0600. Client "
            "certificates also bind the client's Ed25519 identity key, which signs its round keys "
            "and privacy-ledger entries. Every issued certificate is kept in DIR/issued/ so that "
            "'keys revoke' can revoke each one ever issued to a name."
        ),
    )
    sub = keys.add_subparsers(dest="keys_command", metavar="ACTION", required=True)

    init = sub.add_parser("init-ca", help="create a new federation CA (ca.pem, ca.key) in --dir")
    init.add_argument("--dir", required=True, type=Path, help="credentials directory")
    init.add_argument("--days", type=int, default=None, help=_DAYS_HELP.format(3650))
    init.add_argument("--force", action="store_true", help="replace an existing CA (invalidates issued certificates)")
    init.set_defaults(handler=_init_ca)

    server = sub.add_parser("issue-server", help="issue the coordinator's TLS certificate (server.pem, server.key)")
    server.add_argument("--dir", required=True, type=Path, help="credentials directory holding the CA")
    server.add_argument(
        "--host", action="append", default=None, metavar="HOST",
        help="IP address or DNS name clients dial (repeatable; default: 127.0.0.1 and localhost)",
    )
    server.add_argument("--days", type=int, default=None, help=_DAYS_HELP.format(397))
    server.add_argument("--force", action="store_true", help="replace an existing server certificate")
    server.set_defaults(handler=_issue_server)

    client = sub.add_parser(
        "issue-client", help="issue a client certificate and Ed25519 identity key (clients/NAME.*)"
    )
    client.add_argument("name", metavar="NAME", help="client id: 1-63 of a-z 0-9 - _")
    client.add_argument("--dir", required=True, type=Path, help="credentials directory holding the CA")
    client.add_argument("--days", type=int, default=None, help=_DAYS_HELP.format(397))
    client.add_argument("--force", action="store_true", help="reissue (new keys) if NAME already has a certificate")
    client.set_defaults(handler=_issue_client)

    revoke = sub.add_parser(
        "revoke", help="revoke every certificate issued to NAME (writes the CA-signed crl.pem)",
        description="Add every certificate ever issued to each NAME to the federation's revocation list, "
                    "re-sign it with the CA key and write DIR/crl.pem. Copy crl.pem to the server's "
                    "credentials_dir: the server re-reads it within a second, refuses NAME at every call "
                    "from then on, and ships the list in every round plan, so members refuse NAME too.",
    )
    revoke.add_argument("names", nargs="+", metavar="NAME", help="client name(s) to revoke")
    revoke.add_argument("--dir", required=True, type=Path, help="credentials directory holding the CA")
    revoke.add_argument("--days", type=int, default=None,
                        help="the list's validity (default 30): members refuse an expired list, refresh it "
                             "with 'keys crl' before then")
    revoke.set_defaults(handler=_revoke)

    crl = sub.add_parser("crl", help="re-sign the revocation list with a new expiry (or create an empty one)",
                         description="Re-sign DIR/crl.pem (same revoked certificates, next number, new expiry). "
                                     "Members refuse plans whose list has expired: run this before it does.")
    crl.add_argument("--dir", required=True, type=Path, help="credentials directory holding the CA")
    crl.add_argument("--days", type=int, default=None, help="validity in days (default 30)")
    crl.set_defaults(handler=_crl)

    bundle = sub.add_parser(
        "bundle", help="one file for member NAME: CA, its certificate and keys, crl.pem, a filled-in client.toml",
        description="Write member-NAME.tar (mode 0600): the CA certificate, the member's certificate and keys "
                    "(0600), the revocation list, a client.toml with the name and the server address filled in "
                    "and, with --ckks-secret, the federation's CKKS secret context. Hand the member this one file "
                    "over a channel you trust; it holds private keys.",
    )
    bundle.add_argument("name", metavar="NAME", help="the member (issue its certificate first: keys issue-client)")
    bundle.add_argument("--dir", required=True, type=Path, help="credentials directory holding the CA")
    bundle.add_argument("--server", required=True, metavar="HOST:PORT",
                        help="the address members dial (one of the server certificate's --host names)")
    bundle.add_argument("--server-name", default=None, metavar="NAME",
                        help="TLS name to expect when --server is not among the certificate's names")
    bundle.add_argument("--ckks-secret", default=None, metavar="PATH",
                        help="mode ckks: the federation.secret.ctx from 'securefed ckks-init'")
    bundle.add_argument("--state-root", default="/var/lib/securefed", metavar="DIR",
                        help="where client.toml puts state, ledgers, model and data (default /var/lib/securefed; "
                             "a relative DIR is relative to client.toml)")
    bundle.add_argument("--out", default=None, type=Path, help="output file (default: member-NAME.tar)")
    bundle.add_argument("--force", action="store_true", help="replace an existing output file")
    bundle.set_defaults(handler=_bundle)


def _pki() -> ModuleType:
    # cryptography's x509 stays out of `securefed --help`: the handlers load it.
    from securefed.transport import identity

    return identity


def _init_ca(args: argparse.Namespace) -> int:
    d = _pki().init_ca(args.dir, force=args.force, days=args.days)
    print(f"federation CA written to {d.ca_cert} (private key {d.ca_key}, mode 0600)")
    return 0


def _issue_server(args: argparse.Namespace) -> int:
    hosts = args.host or ["127.0.0.1", "localhost"]
    d = _pki().issue_server(args.dir, hosts, force=args.force, days=args.days)
    print(f"server certificate for {', '.join(hosts)} written to {d.server_cert} (key {d.server_key}, mode 0600)")
    return 0


def _issue_client(args: argparse.Namespace) -> int:
    d = _pki().issue_client(args.dir, args.name, force=args.force, days=args.days)
    print(
        f"client {args.name}: certificate {d.client_cert(args.name)}, TLS key {d.client_key(args.name)}, "
        f"identity key {d.client_identity_key(args.name)} (keys mode 0600); hand the member one file: "
        f"securefed keys bundle {args.name} --dir {args.dir} --server HOST:PORT"
    )
    return 0


def _revoke(args: argparse.Namespace) -> int:
    from securefed.transport import revocation

    lst, found = revocation.revoke(args.dir, args.names, days=args.days)
    for name, serials in found.items():
        print(f"revoked {name}: {len(serials)} certificate(s), serial(s) {', '.join(f'{s:x}' for s in serials)}")
    print(f"{lst.describe()} written to {args.dir / revocation.CRL_FILE}; copy it to the server's credentials_dir "
          "(it is re-read within a second; members get it with the next round plan)")
    return 0


def _crl(args: argparse.Namespace) -> int:
    from securefed.transport import revocation

    lst = revocation.refresh(args.dir, days=args.days)
    print(f"{lst.describe()} written to {args.dir / revocation.CRL_FILE}; copy it to the server's credentials_dir")
    return 0


def _bundle(args: argparse.Namespace) -> int:
    from securefed.transport import member_kit as kit

    out = args.out or Path(f"member-{args.name}.tar")
    kit.build_bundle(args.dir, args.name, out, server=args.server, server_name=args.server_name,
                     ckks_secret=args.ckks_secret, state_root=args.state_root, force=args.force)
    print(f"{out} (mode 0600, holds private keys): give it to {args.name} over a channel you trust; "
          f"they start with: tar -xf {out.name} && cd member-{args.name} (clients/README.md, section 2)")
    return 0
