"""`scones ui`: the local Studio in a browser, guarded like Jupyter (a token in the URL it
prints, then an HttpOnly cookie; 127.0.0.1 unless --host says otherwise)."""
from __future__ import annotations

import os
import sys

from app.cli.common import common_options
from scones.errors import SconesError


def register(subparsers) -> None:
    ui = subparsers.add_parser(
        "ui", parents=[common_options()],
        help="the local Studio: pipelines, registry, endpoints, monitoring in a browser",
        description="Serve the Studio web app and print its URL with a one-time token "
                    "(http://127.0.0.1:PORT/?token=...). Pages read the --env backend: the "
                    "embedded default or SageMaker and Step Functions on AWS.")
    ui.add_argument("--port", type=int, default=8888, help="port (default 8888; 0: any free)")
    ui.add_argument("--host", default="127.0.0.1",
                    help="interface to listen on (default 127.0.0.1, this machine only)")
    ui.set_defaults(func=ui_command)


def config_args(args) -> list[str]:
    """The Studio's own configuration options, handed on to the runs it starts."""
    out = ["--env", args.env]
    for path in args.config:
        out += ["--config", os.path.abspath(path)]
    for item in args.overrides:
        out += ["--set", item]
    return out


def ui_command(args, config) -> int:
    from app.ui.security import new_token
    from app.ui.server import serve

    if not 0 <= args.port <= 65535:
        raise SconesError(f"--port {args.port}: not a port number (0-65535)")
    # a token from the environment lets a script (or a test) know it in advance
    token = os.environ.get("SCONES_UI_TOKEN") or new_token()

    def ready(url: str) -> None:
        print(f"scones Studio ({config.env}) at {url}", flush=True)
        if args.host not in ("127.0.0.1", "localhost", "::1"):
            print(f"warning: listening on {args.host}: anyone who can reach it and has the "
                  "token can approve and deploy", file=sys.stderr, flush=True)
        print("  Ctrl-C to stop", flush=True)

    try:
        serve(config, args.host, args.port, config_args(args), token, ready=ready)
    except OSError as exc:
        raise SconesError(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc} "
                          "(choose another --port, or 0 for any free one)") from None
    except KeyboardInterrupt:  # a stop before the server ran (waitress catches the others)
        pass
    print("stopped", file=sys.stderr)
    return 0
