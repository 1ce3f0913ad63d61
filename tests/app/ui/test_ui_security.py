"""The Studio's guard against a real `scones ui` process: the token, the cookie, CSRF, the
Host header, artifact paths and upload bounds (HTTP on 127.0.0.1, as a browser or an
attacker's page would send it)."""
from __future__ import annotations

import http.client
import io
import os
import re
import time
import uuid
from pathlib import Path

import pytest
from PIL import Image

from studio_helpers import start_studio, stop_studio


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    workspace = tmp_path_factory.mktemp("studio-security") / "ws"
    workspace.mkdir()
    (workspace / "reports" / "monitor-x").mkdir(parents=True)
    Image.new("RGB", (8, 8), "red").save(workspace / "reports" / "monitor-x" / "plot.png")
    (workspace.parent / "secret.png").write_bytes(b"\x89PNG not for the browser")
    (workspace / "reports" / "monitor-x" / "link.png").symlink_to(workspace.parent / "secret.png")
    running = start_studio(workspace)
    yield running
    stop_studio(running)


def request(studio, method: str, path: str, body: bytes | None = None,
            headers: dict | None = None, cookie: bool = True):
    host, port = studio.host.split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    sent = {"Host": studio.host, **(headers or {})}
    if cookie and "Cookie" not in sent:
        sent["Cookie"] = f"scones_ui_token={studio.token}"
    connection.request(method, path, body=body, headers=sent)
    response = connection.getresponse()
    data = response.read()
    connection.close()
    return response, data


def csrf(studio) -> str:
    _, page = request(studio, "GET", "/try")
    return re.search(rb'name="csrf_token" value="([0-9a-f]+)"', page).group(1).decode()


def test_every_page_wants_the_token_and_the_url_token_becomes_an_httponly_cookie(studio):
    for path in ("/", "/registry", "/pipelines", "/endpoints", "/monitoring", "/try",
                 "/vendor/plotly.min.js", "/static/studio.js", "/artifacts/reports/monitor-x/plot.png"):
        response, body = request(studio, "GET", path, cookie=False)
        assert response.status == 403, path
        assert studio.token.encode() not in body
    response, _ = request(studio, "GET", "/registry?token=wrong", cookie=False)
    assert response.status == 403
    response, _ = request(studio, "GET", f"/registry?token={studio.token}", cookie=False)
    assert response.status == 303
    assert response.getheader("Location") == "/registry"  # the token leaves the URL
    cookie = response.getheader("Set-Cookie")
    assert f"scones_ui_token={studio.token}" in cookie
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    response, body = request(studio, "GET", "/registry")
    assert response.status == 200 and b"Model registry" in body
    assert "script-src 'self'" in response.getheader("Content-Security-Policy")
    assert response.getheader("X-Frame-Options") == "DENY"
    # an Authorization header works for scripts
    response, _ = request(studio, "GET", "/registry", cookie=False,
                          headers={"Authorization": f"token {studio.token}"})
    assert response.status == 200


def test_a_post_without_the_csrf_token_is_refused_and_changes_nothing(studio):
    form = b"Epochs=3"
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    response, body = request(studio, "POST", "/pipelines/run", form, headers)
    assert response.status == 403 and b"CSRF" in body
    response, _ = request(studio, "POST", "/pipelines/run", form + b"&csrf_token=" + b"0" * 64,
                          headers)
    assert response.status == 403
    # from another origin, even with the right token
    token = csrf(studio).encode()
    response, _ = request(studio, "POST", "/registry/1/approve", b"csrf_token=" + token,
                          {**headers, "Origin": "http://evil.example"})
    assert response.status == 403
    assert not (studio.workspace / "ui" / "runs").exists()  # no run was started
    # with it, the action runs: here the registry answers that there is no version 1
    response, _ = request(studio, "POST", "/registry/1/approve",
                          b"description=x&csrf_token=" + token, headers)
    assert response.status == 303
    flash_cookie = response.getheader("Set-Cookie").split(";")[0]
    _, page = request(studio, "GET", "/registry",
                      headers={"Cookie": f"scones_ui_token={studio.token}; {flash_cookie}"})
    assert b"has no version 1" in page and b"flash error" in page


def test_the_host_header_is_checked_against_dns_rebinding(studio):
    port = studio.host.split(":")[1]
    for host in (f"evil.example:{port}", "evil.example", f"127.0.0.1.nip.io:{port}"):
        response, _ = request(studio, "GET", "/registry", headers={"Host": host})
        assert response.status == 403, host
    response, _ = request(studio, "GET", "/registry", headers={"Host": f"localhost:{port}"})
    assert response.status == 200


@pytest.mark.parametrize("path", [
    "/artifacts/../registry.sqlite",
    "/artifacts/../../../../etc/passwd",
    "/artifacts/..%2F..%2Fsecret.png",
    "/artifacts/reports/../../secret.png",
    "/artifacts/%2Fetc%2Fpasswd",
    "/artifacts/reports/monitor-x/link.png",     # a link inside pointing out
    "/artifacts/registry.sqlite",                 # inside, but not a plot
])
def test_artifact_paths_outside_the_workspace_are_refused(studio, path):
    response, body = request(studio, "GET", path)
    if response.status in (301, 308):  # werkzeug merges the slashes: follow it
        response, body = request(studio, "GET", response.getheader("Location"))
    assert response.status in (403, 404), path
    assert b"not for the browser" not in body and b"root:" not in body
    assert b"SQLite" not in body


def test_a_plot_inside_the_workspace_is_served(studio):
    response, body = request(studio, "GET", "/artifacts/reports/monitor-x/plot.png")
    assert response.status == 200 and body.startswith(b"\x89PNG")


def _multipart(files: dict[str, bytes], token: str) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="csrf_token"\r\n\r\n'
             f"{token}\r\n".encode()]
    for name, data in files.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="images"; '
                     f'filename="{name}"\r\nContent-Type: image/png\r\n\r\n'.encode() + data
                     + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def test_uploads_over_the_endpoint_limits_are_refused_by_name(studio):
    huge = io.BytesIO()
    Image.new("L", (7000, 6000)).save(huge, "PNG")  # 42 MP, a few KB compressed
    files = {"big.png": os.urandom(6 * 1024 * 1024 + 10), "wide.png": huge.getvalue()}
    body, kind = _multipart(files, csrf(studio))
    response, _ = request(studio, "POST", "/try", body, {"Content-Type": kind})
    assert response.status == 303
    job = response.getheader("Location").rsplit("job=", 1)[1]
    for _ in range(100):
        _, page = request(studio, "GET", f"/try/{job}/results")
        if b"try-results" in page:
            break
        time.sleep(0.2)
    assert page.count(b"<b>UploadRefused</b>") == 2
    assert b"larger than 6 MB" in page and b"more than 40 megapixels" in page
    # the upload's bytes are never echoed back
    assert files["big.png"][:64] not in page


def test_a_page_without_the_token_is_refused_in_the_browser(studio, browser, shoot):
    browser.delete_all_cookies()
    browser.get(f"{studio.url}/registry")
    assert "403" in browser.find_element("tag name", "body").text
    browser.get(f"{studio.url}/?token={studio.token}")
    assert browser.current_url.endswith("/pipelines")
    assert "token" not in browser.current_url
    browser.get(f"{studio.url}/registry")
    assert "Model registry" in browser.find_element("tag name", "h1").text


def test_a_bad_or_busy_port_is_one_error_line(run_scones, tmp_path):
    import socket

    result = run_scones("ui", "--port", "99999", workspace=tmp_path / "ws")
    assert result.returncode == 2 and "--port 99999: not a port number" in result.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_scones("ui", "--port", str(port), workspace=tmp_path / "ws", timeout=120)
    assert result.returncode == 2, result.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr
