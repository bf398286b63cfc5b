"""The CURVE options of the scanner link: the receiving side (``receive``, ``session``) and the
sending side (``scanner replay``)."""

from __future__ import annotations


def add_server_args(p) -> None:
    p.add_argument("--curve-secret", metavar="FILE", default=None,
                   help="this receiver's NAME.key_secret (from b2m keys): encrypt the scanner link (and a "
                        "session's --results stream) with CURVE; a non-loopback --bind is then allowed without "
                        "--insecure")
    p.add_argument("--curve-clients", metavar="DIR", default=None,
                   help="with --curve-secret: accept only scanners whose public NAME.key is in DIR (without it, "
                        "any scanner holding the receiver's public key can connect)")


def server_keys(args):
    """The :class:`realtime.transport.CurveServer` the options ask for, or None."""
    from realtime.transport import load_curve_server

    if args.curve_clients and not args.curve_secret:
        raise ValueError("--curve-clients needs --curve-secret (the receiver's own NAME.key_secret)")
    return load_curve_server(args.curve_secret, args.curve_clients) if args.curve_secret else None


def add_client_args(p, who: str = "scanner", server: str = "receiver") -> None:
    p.add_argument("--curve-secret", metavar="FILE", default=None,
                   help=f"this {who}'s NAME.key_secret (from b2m keys); with --curve-server-key, encrypts the link")
    p.add_argument("--curve-server-key", metavar="FILE", default=None, help=f"the {server}'s public NAME.key")


def client_keys(args):
    """The :class:`realtime.transport.CurveClient` the options ask for, or None."""
    from realtime.transport import load_curve_client

    if bool(args.curve_secret) != bool(args.curve_server_key):
        raise ValueError("--curve-secret and --curve-server-key go together: this scanner's NAME.key_secret and "
                         "the receiver's public NAME.key")
    return load_curve_client(args.curve_secret, args.curve_server_key) if args.curve_secret else None
