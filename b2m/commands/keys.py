"""``b2m keys NAME --out DIR``: a CURVE key pair for the scanner link."""

from __future__ import annotations

import sys


def add_parser(sub) -> None:
    p = sub.add_parser("keys", help="make a CURVE key pair for an encrypted scanner link",
                       description="Write DIR/NAME.key (public: give it to the other side) and DIR/NAME.key_secret "
                                   "(keep it on this machine). The receiver uses --curve-secret receiver.key_secret "
                                   "[--curve-clients DIR_OF_SCANNER_KEYS]; the scanner uses --curve-secret "
                                   "scanner.key_secret --curve-server-key receiver.key.")
    p.add_argument("name", help="key name, e.g. receiver or scanner")
    p.add_argument("--out", required=True, help="folder to write the two files into")
    p.set_defaults(func=run)


def run(args) -> int:
    from realtime.transport import generate_keys

    public, secret = generate_keys(args.out, args.name)
    print(f"public\t{public}", file=sys.stdout)
    print(f"secret\t{secret}", file=sys.stdout)
    return 0
