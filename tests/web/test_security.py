"""Access control of the web app, against the real app in-process (httpx ASGI transport): the
token, the session cookie, CSRF, ids that try to leave their folder, and refused uploads that
must leave nothing on disk."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon.web.auth import CSRF_HEADER, SESSION_COOKIE, WebAuth, load_or_create_token
from simulations.node_helpers import short_root
from tests.web.helpers import log_in, open_web_node, web_config


@pytest.fixture
def root() -> Iterator[Path]:
    with short_root() as path:
        yield path


def _files_under(folder: Path) -> list[Path]:
    if not folder.exists():
        return []
    return [Path(dirpath) / name for dirpath, _, names in os.walk(folder) for name in names]


async def test_every_route_needs_the_token(root: Path) -> None:
    async with open_web_node(root) as web:
        for path in ("/api/status", "/api/recordings", "/api/openapi.json", "/recordings", "/node"):
            response = await web.client.get(path)
            assert response.status_code == 401, path
        wrong = {"Authorization": "Bearer " + "x" * len(web.token)}
        assert (await web.client.get("/api/status", headers=wrong)).status_code == 401
        web.client.cookies.set(SESSION_COOKIE, "abc.def")
        response = await web.client.get("/api/status")
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "unauthorized"
        web.client.cookies.clear()
        assert (await web.client.get("/login?token=wrong")).status_code == 401
        assert SESSION_COOKIE not in web.client.cookies
        ok = await web.client.get("/api/status", headers=web.auth_headers())
        assert ok.status_code == 200
        assert ok.json()["node_id"] == web.node.peer_id


async def test_login_sets_a_strict_httponly_cookie_and_csrf_guards_posts(root: Path) -> None:
    async with open_web_node(root) as web:
        response = await web.client.get(f"/login?token={web.token}")
        assert response.status_code == 303
        assert response.headers["location"] == "/recordings"
        cookie = response.headers["set-cookie"].lower()
        assert "httponly" in cookie
        assert "samesite=strict" in cookie
        assert web.token not in response.headers["set-cookie"]
        csrf = await log_in(web)
        assert (await web.client.get("/api/status")).status_code == 200
        # A state-changing request from the session without its CSRF token: refused.
        regenerate = "/api/recordings/0123456789abcdef0123/captions/regenerate"
        assert (await web.client.post(regenerate)).status_code == 403
        wrong = await web.client.post(regenerate, headers={CSRF_HEADER: "0" * len(csrf)})
        assert wrong.status_code == 403
        # With it, the request reaches the service (which knows no such recording).
        assert (await web.client.post(regenerate, headers={CSRF_HEADER: csrf})).status_code == 404
        # A bearer token is no ambient credential: no CSRF token needed.
        web.client.cookies.clear()
        by_script = await web.client.post(regenerate, headers=web.auth_headers())
        assert by_script.status_code == 404


@pytest.mark.parametrize(
    "path",
    [
        "/api/recordings/..%2F..%2Fidentity.key/media",
        "/api/recordings/../../identity.key",
        "/api/recordings/..%2f/captions?lang=en",
        "/api/recordings/%2e%2e/media",
        "/api/recordings/0123456789abcdef012/media",  # one digit short
        "/api/calls/..%2F..%2Fidentity.key/captions?lang=en",
        "/api/calls/1/captions?lang=..%2F..%2Fidentity&format=vtt",
        "/recordings/..%2F..",
    ],
)
async def test_traversal_in_an_id_is_not_found(root: Path, path: str) -> None:
    async with open_web_node(root) as web:
        (web.node.home.root / "calls" / "1").mkdir(parents=True)
        response = await web.client.get(path, headers=web.auth_headers())
        assert response.status_code == 404, response.text
        assert web.node.identity.private_key not in response.content


async def test_oversize_upload_is_413_and_leaves_nothing(root: Path) -> None:
    async with open_web_node(root, config=web_config(max_upload_mb=1)) as web:
        big = os.urandom(2 * 2**20)
        response = await web.client.post(
            "/api/recordings", headers=web.auth_headers(), files={"file": ("big.webm", big)}
        )
        assert response.status_code == 413
        assert "1 MiB" in response.json()["error"]["message"]
        assert _files_under(web.node.home.root / "recordings") == []
        assert web.node.jobs.list() == []


# The server stops reading mid-body, as it should; httpx's in-process transport then abandons the
# client's own body generator, which Python reports as unraisable. That is the test client's.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_oversize_upload_without_content_length_is_413(root: Path) -> None:
    async with open_web_node(root, config=web_config(max_upload_mb=1)) as web:
        boundary = "b0undary"
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
            "Content-Type: audio/wav\r\n\r\n"
        ).encode()

        async def body():  # streamed: no Content-Length header
            yield head
            for _ in range(40):
                yield b"\x00" * 65536
            yield f"\r\n--{boundary}--\r\n".encode()

        response = await web.client.post(
            "/api/recordings",
            headers={
                **web.auth_headers(),
                "Content-Type": f"multipart/form-data; boundary={boundary}",
            },
            content=body(),
        )
        assert response.status_code == 413
        assert _files_under(web.node.home.root / "recordings") == []


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("notes.txt", b"this is not a recording at all\n" * 100, "not a recording PyAV can read"),
        ("fake.mp4", b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 4000, "not a recording PyAV can read"),
        ("empty.wav", b"", "empty"),
    ],
)
async def test_non_media_upload_is_refused_with_a_reason(
    root: Path, name: str, content: bytes, reason: str
) -> None:
    async with open_web_node(root) as web:
        response = await web.client.post(
            "/api/recordings", headers=web.auth_headers(), files={"file": (name, content)}
        )
        assert response.status_code == 415
        assert reason in response.json()["error"]["message"]
        assert _files_under(web.node.home.root / "recordings") == []
        assert web.node.jobs.list() == []


async def test_upload_without_a_file_is_400(root: Path) -> None:
    async with open_web_node(root) as web:
        response = await web.client.post(
            "/api/recordings", headers=web.auth_headers(), files={"to": (None, "pt")}
        )
        assert response.status_code == 400
        assert "no file" in response.json()["error"]["message"]
        form = await web.client.post(
            "/api/recordings", headers=web.auth_headers(), data={"to": "pt"}
        )
        assert form.status_code == 400
        assert "multipart/form-data" in form.json()["error"]["message"]


def test_token_file_is_private_and_stable(tmp_path: Path) -> None:
    token = load_or_create_token(tmp_path)
    assert (tmp_path / "web-token").stat().st_mode & 0o777 == 0o600
    assert load_or_create_token(tmp_path) == token
    os.chmod(tmp_path / "web-token", 0o644)
    with pytest.raises(Exception, match="readable by other users"):
        load_or_create_token(tmp_path)


def test_sessions_are_bound_to_the_token() -> None:
    ours, theirs = WebAuth("a" * 32), WebAuth("b" * 32)
    cookie = ours.new_session()
    assert ours.check_session(cookie) is not None
    assert theirs.check_session(cookie) is None
    nonce, signature = cookie.split(".")
    assert ours.check_session(f"{nonce}x.{signature}") is None
    credentials = ours.check_session(cookie)
    assert credentials is not None
    assert ours.csrf_ok(credentials, credentials.csrf_token)
    assert not ours.csrf_ok(credentials, None)
