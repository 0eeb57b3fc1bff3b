"""The HTTP API against the real app in-process, the real job queue, the real tiny.en and the
real translator: upload a recording made with ffmpeg, follow it to ready, read its captions in
every format (checked with the independent `srt` and `webvtt` parsers), seek in its media with a
Range request, regenerate it; and the OpenAPI description against the app's routes."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import srt
import webvtt
from starlette.routing import Mount, Route

from daemon.web.app import build_app
from daemon.web.auth import CSRF_HEADER
from daemon.web.openapi import openapi_document
from daemon.web.recordings import check_recording_id
from media.models import embedded_whisper_dir
from simulations.node_helpers import short_root
from tests.web.helpers import log_in, make_recording, open_web_node, wait_until_finished

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_recording(tmp_path_factory.mktemp("web"))


@pytest.fixture
def root() -> Iterator[Path]:
    with short_root() as path:
        yield path


async def test_upload_caption_play_and_regenerate(root: Path, recording: Path) -> None:
    async with open_web_node(root) as web:
        csrf = await log_in(web)
        with recording.open("rb") as media:
            response = await web.client.post(
                "/api/recordings",
                headers={CSRF_HEADER: csrf},
                files={"file": ("talk.webm", media, "video/webm")},
                data={"to": "pt"},
            )
        assert response.status_code == 201, response.text
        created = response.json()
        recording_id = created["id"]
        check_recording_id(recording_id)
        assert created["status"] in ("pending", "processing")
        assert created["media_type"] == "video/webm"
        assert created["has_video"] is True
        assert created["requested_languages"] == ["pt"]
        # The job sits on the node's one queue, the one `parley caption` submits to.
        assert [job.job_id for job in web.node.jobs.list()] == [created["job_id"]]

        done = await wait_until_finished(web, recording_id, timeout=180)
        assert done["status"] == "ready", done
        assert done["language"] == "en"
        assert done["languages"] == ["en", "pt"]
        assert done["progress"] == 1.0

        status = (await web.client.get(f"/api/recordings/{recording_id}/captions/status")).json()
        assert status["status"] == "ready"
        assert status["job_id"] == created["job_id"]

        tracks = {}
        for lang in ("en", "pt"):
            vtt = await web.client.get(
                f"/api/recordings/{recording_id}/captions?lang={lang}&format=vtt"
            )
            assert vtt.status_code == 200
            assert vtt.headers["content-type"].startswith("text/vtt")
            srt_text = (
                await web.client.get(
                    f"/api/recordings/{recording_id}/captions?lang={lang}&format=srt"
                )
            ).text
            from_srt = list(srt.parse(srt_text))
            from_vtt = webvtt.from_buffer(io.StringIO(vtt.text)).captions
            assert len(from_srt) == len(from_vtt) > 0
            for a, b in zip(from_srt, from_vtt, strict=True):
                assert a.content.replace("\n", " ") == b.text.replace("\n", " ")
                assert abs(a.start.total_seconds() - b.start_in_seconds) < 0.002
            tracks[lang] = from_srt
        english = " ".join(cue.content for cue in tracks["en"]).lower()
        assert "train" in english and "station" in english
        # The translation rides on the English timing.
        assert [c.start for c in tracks["pt"]] == [c.start for c in tracks["en"]]
        assert " ".join(c.content for c in tracks["pt"]) != " ".join(
            c.content for c in tracks["en"]
        )

        document = (
            await web.client.get(f"/api/recordings/{recording_id}/captions?lang=en&format=json")
        ).json()
        words = [word for cue in document["cues"] for word in cue["words"]]
        assert len(words) >= 8
        assert all(w["start_s"] <= w["end_s"] for w in words)
        assert [w["start_s"] for w in words] == sorted(w["start_s"] for w in words)
        assert document["cues"][0]["start_s"] == pytest.approx(
            tracks["en"][0].start.total_seconds(), abs=0.002
        )

        size = recording.stat().st_size
        whole = await web.client.get(f"/api/recordings/{recording_id}/media")
        assert whole.content == recording.read_bytes()
        assert whole.headers["accept-ranges"] == "bytes"
        part = await web.client.get(
            f"/api/recordings/{recording_id}/media", headers={"Range": "bytes=100-199"}
        )
        assert part.status_code == 206
        assert part.headers["content-range"] == f"bytes 100-199/{size}"
        assert part.content == recording.read_bytes()[100:200]

        listed = (await web.client.get("/api/recordings?limit=10")).json()
        assert listed["total"] == 1
        assert listed["items"][0]["id"] == recording_id

        missing = await web.client.get(f"/api/recordings/{recording_id}/captions?lang=de")
        assert missing.status_code == 422
        assert "no 'de' track" in missing.json()["error"]["message"]

        unknown = await web.client.post(
            f"/api/recordings/{recording_id}/captions/regenerate",
            headers={CSRF_HEADER: csrf},
            content=json.dumps({"model": "large-v9"}),
        )
        assert unknown.status_code == 422
        assert "no Whisper model named 'large-v9'" in unknown.json()["error"]["message"]
        # Another model, by name: a folder under <home>/models/whisper/ (here tiny.en again).
        named = web.node.home.models_dir / "whisper" / "tiny-again"
        named.parent.mkdir()
        named.symlink_to(embedded_whisper_dir(), target_is_directory=True)
        again = await web.client.post(
            f"/api/recordings/{recording_id}/captions/regenerate",
            headers={CSRF_HEADER: csrf},
            content=json.dumps({"languages": [], "model": "tiny-again"}),
        )
        assert again.status_code == 202, again.text
        assert again.json()["job_id"] != created["job_id"]
        assert again.json()["status"] in ("pending", "processing")
        assert again.json()["model"] == "tiny-again"
        assert done["model"] == "default"
        twice = await web.client.post(
            f"/api/recordings/{recording_id}/captions/regenerate", headers={CSRF_HEADER: csrf}
        )
        assert twice.status_code == 422
        done = await wait_until_finished(web, recording_id, timeout=180)
        assert done["languages"] == ["en"]
        job = web.node.jobs.get(done["job_id"])
        assert job is not None and job.outputs["model"] == "tiny-again"

        assert (await web.client.get("/api/models")).json() == {"models": ["default", "tiny-again"]}
        # The pages render what the API serves.
        page = await web.client.get(f"/recordings/{recording_id}")
        assert page.status_code == 200
        assert '<option value="tiny-again" selected>' in page.text
        assert 'kind="subtitles" srclang="en"' in page.text
        assert "content-security-policy" in page.headers


async def test_unsupported_language_is_refused_and_nothing_is_kept(
    root: Path, recording: Path
) -> None:
    async with open_web_node(root) as web:
        response = await web.client.post(
            "/api/recordings",
            headers=web.auth_headers(),
            files={"file": ("talk.webm", recording.read_bytes(), "video/webm")},
            data={"to": "xx"},
        )
        assert response.status_code == 422, response.text
        assert "xx" in response.json()["error"]["message"]
        folder = web.node.home.root / "recordings"
        assert [p for p in folder.rglob("*") if p.is_file()] == []


def test_openapi_describes_exactly_the_api_routes() -> None:
    from unittest.mock import MagicMock

    app = build_app(MagicMock())
    served: set[tuple[str, str]] = set()
    for route in app.routes:
        if isinstance(route, Route) and route.path.startswith("/api/"):
            served |= {
                (route.path, method.lower()) for method in route.methods or () if method != "HEAD"
            }
        assert isinstance(route, Route | Mount)
    document = openapi_document()
    described = {(path, method) for path, item in document["paths"].items() for method in item}
    assert served == described
    assert document["openapi"].startswith("3.1")
