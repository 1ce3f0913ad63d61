"""The Studio's guard, as Jupyter's: a token on every request, then an HttpOnly cookie; a
CSRF token on every state change (all of them POSTs); the Host header checked against the
names this server was bound to (a DNS-rebinding page cannot talk to it); strict response
headers. Nothing here ever echoes a token or a file's content back in an error.
"""
from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass, field
from urllib.parse import urlencode, urlsplit

from flask import Flask, Response, abort, redirect, request

COOKIE = "scones_ui_token"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"
# GETs that change nothing; every other method must carry the CSRF token.
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
# script-src 'self': every script is a file the server serves (plotly.min.js from the
# plotly package, studio.js); chart data travels as JSON in <script type="application/json">.
CONTENT_SECURITY_POLICY = ("default-src 'self'; img-src 'self' data: blob:; "
                           "style-src 'self' 'unsafe-inline'; script-src 'self'; "
                           "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
                           "form-action 'self'")


def new_token() -> str:
    return secrets.token_hex(24)


@dataclass
class Guard:
    """token: what the URL carries; hosts: the Host header values this server answers to."""

    token: str
    hosts: set[str] = field(default_factory=set)

    @property
    def csrf_token(self) -> str:
        """Derived from the token (so a restart with a new token voids old forms), never
        equal to it (a form field must not leak the login token)."""
        return hmac.new(self.token.encode(), b"scones-ui-csrf", hashlib.sha256).hexdigest()

    @staticmethod
    def hosts_for(host: str, port: int) -> set[str]:
        names = {host}
        if host in ("127.0.0.1", "localhost", "::1"):
            names |= {"127.0.0.1", "localhost", "[::1]"}
        if host in ("0.0.0.0", "::"):
            # bound to every interface on purpose: the names a person types still count
            import socket

            names |= {"127.0.0.1", "localhost", socket.gethostname(), socket.getfqdn()}
        with_port = {f"{n}:{port}" for n in names}
        return {n.lower() for n in names | with_port}

    def install(self, app: Flask) -> None:
        app.before_request(self._check)
        app.after_request(self._headers)

    # -- the checks ------------------------------------------------------------------------
    def _check(self):
        if request.host.lower() not in self.hosts:
            abort(403, "this server answers only to the host it was started on (the Host "
                       "header names another: DNS rebinding?)")
        given = request.args.get("token")
        if given is not None:
            if not hmac.compare_digest(given.encode(), self.token.encode()):
                abort(403, "wrong token: use the URL `scones ui` printed")
            # Logged in: hold the token in an HttpOnly cookie, and take it out of the URL
            # (history, screenshots, Referer) with a redirect to the same page.
            rest = [(k, v) for k, v in request.args.items(multi=True) if k != "token"]
            target = request.path + (f"?{urlencode(rest)}" if rest else "")
            response = redirect(target, code=303)
            response.set_cookie(COOKIE, self.token, httponly=True, samesite="Strict",
                                secure=request.is_secure, path="/")
            return response
        cookie = request.cookies.get(COOKIE, "")
        header = request.headers.get("Authorization", "")
        presented = cookie or (header[6:] if header.lower().startswith("token ") else "")
        if not presented or not hmac.compare_digest(presented.encode(), self.token.encode()):
            abort(403, "a token is required: open the URL `scones ui` printed "
                       "(http://HOST:PORT/?token=...)")
        if request.method not in SAFE_METHODS:
            self._check_csrf()
        return None

    def _check_csrf(self) -> None:
        origin = request.headers.get("Origin")
        if origin and origin != "null" and urlsplit(origin).netloc.lower() not in self.hosts:
            abort(403, "cross-origin request refused")
        sent = request.headers.get(CSRF_HEADER) or request.form.get(CSRF_FIELD, "")
        if not sent or not hmac.compare_digest(sent.encode(), self.csrf_token.encode()):
            abort(403, "the form's CSRF token is missing or wrong: reload the page and try "
                       "again")

    @staticmethod
    def _headers(response: Response) -> Response:
        response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers.setdefault("Cache-Control", "no-store")
        return response
