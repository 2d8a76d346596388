"""The real server against foreign origins and unauthenticated clients.

What Gradio 6 does (gradio/route_utils.py CustomCORSMiddleware): when the server is reached as localhost, a
request whose Origin is not localhost gets no Access-Control-Allow-Origin header, so a browser refuses the
preflight of a JSON POST (the queue join is never sent) and never lets a foreign page read a response. The
requests a browser sends cross-origin without a preflight (text/plain, form or multipart bodies) are not valid
queue joins: they are refused (422) before any handler runs. With --auth every API route needs the session
cookie (401 without it)."""
from __future__ import annotations

import http.client
import json
import urllib.parse

import pytest
from PIL import Image

from tests.browser.studio_server import studio_server

EVIL = "http://evil.example"


def request(url: str, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    u = urllib.parse.urlsplit(url)
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    try:
        c.request(method, path, body=body, headers=headers or {})
        r = c.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        c.close()


def join_body(fn_index: int, data: list, session: str = "secsession") -> bytes:
    return json.dumps({"data": data, "fn_index": fn_index, "session_hash": session, "event_data": None,
                       "trigger_id": None}).encode()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("srv")
    data = root / "data"
    (data / "datasets" / "set" / "images").mkdir(parents=True)
    Image.new("RGB", (32, 32), (1, 2, 3)).save(data / "datasets" / "set" / "images" / "0.png")
    with studio_server(data) as url:
        yield url, data


def test_foreign_origin_gets_no_cors_grant(server):
    url, data = server
    own = url  # http://127.0.0.1:<port>
    pre = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"}
    checked = 0
    for path in ("/gradio_api/queue/join", "/gradio_api/upload", "/gradio_api/run/on_start", "/gradio_api/info",
                 "/config", f"/gradio_api/file={data}/datasets/set/images/0.png"):
        status, h, _ = request(url, "OPTIONS", path, headers={"Origin": EVIL, **pre})
        assert "access-control-allow-origin" not in h, (path, h)  # the browser blocks the real request
        status, h, _ = request(url, "OPTIONS", path, headers={"Origin": own, **pre})
        assert h.get("access-control-allow-origin") == own  # the page's own origin is granted
        status, h, _ = request(url, "GET", path, headers={"Origin": EVIL})
        assert "access-control-allow-origin" not in h, (path, h)  # a foreign page cannot read any response
        checked += 3

    # a JSON queue join from a foreign origin: no grant, so a browser page can neither send it (preflight
    # refused above) nor read its answer
    status, h, _ = request(url, "POST", "/gradio_api/queue/join", join_body(1, ["set"]),
                           {"Origin": EVIL, "Content-Type": "application/json"})
    assert "access-control-allow-origin" not in h

    # the forms a browser sends cross-origin without a preflight are no queue join at all
    body = join_body(11, ["set", "cross-origin", None, "tiny:sd1"], "csrf")
    refused = []
    for ctype in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"):
        for path in ("/gradio_api/queue/join", "/gradio_api/run/on_start", "/gradio_api/call/on_start"):
            status, h, _ = request(url, "POST", path, body, {"Origin": EVIL, "Content-Type": ctype})
            refused.append(status)
            assert status == 422 and "access-control-allow-origin" not in h, (path, ctype, status)
    assert not any((data / "runs").iterdir())  # no training started
    print(f"\ncross-origin checks: {checked + 1 + len(refused)} requests, foreign origin granted: 0; "
          f"simple cross-origin POSTs refused: {len(refused)}/{len(refused)} (422)")


def test_exposed_server_demands_login(tmp_path):
    data = tmp_path / "data"
    with studio_server(data, "--host", "0.0.0.0", "--auth", "artist:s3cret-pw") as url:
        file_path = f"/gradio_api/file={data}/datasets"
        gated = [("GET", "/config"), ("GET", "/gradio_api/info"), ("GET", file_path),
                 ("POST", "/gradio_api/queue/join"), ("POST", "/gradio_api/upload"), ("POST", "/gradio_api/run/on_start"),
                 ("GET", "/gradio_api/queue/data?session_hash=x")]
        for method, path in gated:
            status, _, body = request(url, method, path, join_body(0, []) if method == "POST" else None,
                                      {"Content-Type": "application/json"})
            assert status == 401, (method, path, status, body[:200])
        status, _, page = request(url, "GET", "/")
        assert status == 200 and b"train-start" not in page  # the page is the login form, without the studio
        bad = urllib.parse.urlencode({"username": "artist", "password": "wrong"}).encode()
        status, h, _ = request(url, "POST", "/login", bad, {"Content-Type": "application/x-www-form-urlencoded"})
        assert status in (400, 401) and "set-cookie" not in h
        good = urllib.parse.urlencode({"username": "artist", "password": "s3cret-pw"}).encode()
        status, h, _ = request(url, "POST", "/login", good, {"Content-Type": "application/x-www-form-urlencoded"})
        assert status == 200 and "set-cookie" in h
        cookies = "; ".join(c.split(";", 1)[0] for c in h["set-cookie"].split(", ") if "=" in c.split(";", 1)[0])
        status, _, cfg = request(url, "GET", "/config", headers={"Cookie": cookies})
        assert status == 200 and b"train-start" in cfg
    print(f"\nwith --auth: routes without the session cookie answered 401: {len(gated)}/{len(gated)}")


def test_dns_rebinding_host_is_refused(server):
    """A page on a foreign domain that resolves to 127.0.0.1 reaches the server with that domain as
    Host: such requests are refused before any route runs."""
    url, data = server
    port = urllib.parse.urlsplit(url).port
    tried = 0
    for host in (f"evil.example:{port}", "evil.example", f"127.0.0.1.evil.example:{port}", f"10.0.0.1:{port}"):
        for method, path in (("GET", "/"), ("GET", "/config"), ("POST", "/gradio_api/queue/join")):
            status, h, body = request(url, method, path, join_body(1, ["set"]) if method == "POST" else None,
                                      {"Host": host, "Content-Type": "application/json"})
            assert status == 400, (host, path, status)
            tried += 1
    for host in (f"127.0.0.1:{port}", f"localhost:{port}"):
        status, _, _ = request(url, "GET", "/config", headers={"Host": host})
        assert status == 200, host
    print(f"\nDNS-rebinding Host headers refused: {tried}/{tried}")
