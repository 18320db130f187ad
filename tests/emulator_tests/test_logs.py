"""Container output as logs: streamed while an input runs, tagged with its container, input and call."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone

import modal

image = modal.Image.debian_slim()


def _talker(app: modal.App, name: str, **options) -> modal.Function:
    def talk(tag: str, release: str = "") -> str:
        import pathlib
        import sys
        import time

        print(f"{tag} started", flush=True)
        print(f"{tag} complains", file=sys.stderr, flush=True)
        while release and not pathlib.Path(release).exists():
            time.sleep(0.05)
        print(f"{tag} finished", flush=True)
        return tag

    return app.function(image=image, serialized=True, name=name, **options)(talk)


def test_output_streams_while_the_input_runs_and_the_stream_ends_with_the_call(modal_emulator, tmp_path):
    app = modal.App("emulator-logs-live")
    talk = _talker(app, "live_talker")
    release = tmp_path / "release"
    with app.run():
        call = talk.spawn("live", str(release))
        seen = []
        for entry in call.logs.stream(timeout=30):
            seen.append(entry)
            if entry.message == "live started\n":
                assert not release.exists()  # the input is still running: it waits for this file
                release.touch()
        assert call.get(timeout=30) == "live"
    by_message = {entry.message: entry for entry in seen}
    assert set(by_message) >= {"live started\n", "live complains\n", "live finished\n"}
    assert by_message["live started\n"].source == "stdout"
    assert by_message["live complains\n"].source == "stderr"
    input_id, container_id = by_message["live started\n"].context_ids
    assert input_id.startswith("in-") and container_id.startswith("ta-")
    assert abs(by_message["live started\n"].timestamp - datetime.now(timezone.utc)) < timedelta(minutes=1)


def test_logs_are_attributed_to_their_own_call_input_and_container(modal_emulator, tmp_path):
    app = modal.App("emulator-logs-attribution")
    talk = _talker(app, "attributed_talker", max_containers=2)
    release = tmp_path / "release"
    with app.run():
        calls = {tag: talk.spawn(tag, str(release)) for tag in ("left", "right")}
        release.touch()
        assert {tag: call.get(timeout=30) for tag, call in calls.items()} == {
            "left": "left",
            "right": "right",
        }
        for tag, call in calls.items():
            messages = [entry.message for entry in call.logs.tail()]
            assert sorted(messages) == sorted([f"{tag} started\n", f"{tag} complains\n", f"{tag} finished\n"])
        entries = list(talk.logs.tail())
    contexts = {entry.message: entry.context_ids for entry in entries}
    left_call, left_input, left_container = contexts["left started\n"]
    assert left_call == calls["left"].object_id
    assert contexts["left finished\n"] == [left_call, left_input, left_container]
    assert contexts["right started\n"][0] == calls["right"].object_id
    assert contexts["right started\n"][1] != left_input
    # Only the talk: a container stopped while starting (the app ends) may print a traceback of its own.
    records = [
        line
        for line in modal_emulator.recorder.logs
        if line.function_name == "attributed_talker" and line.text.startswith(("left", "right"))
    ]
    assert {(line.text.split()[0], line.function_call_id) for line in records} == {
        (tag, call.object_id) for tag, call in calls.items()
    }


def test_logs_are_fetched_by_time_and_source_and_shown_by_the_cli(modal_emulator):
    app = modal.App("emulator-logs-fetch")
    talk = _talker(app, "fetched_talker")
    since = datetime.now(timezone.utc) - timedelta(seconds=1)
    with app.run():
        talk.remote("fetched")
        deadline = time.monotonic() + 30
        while len(list(app.logs.fetch(since=since))) < 3:
            assert time.monotonic() < deadline, "the output never reached the app's logs"
            time.sleep(0.05)
        stderr = [entry.message for entry in app.logs.fetch(since=since, source="stderr")]
        assert stderr == ["fetched complains\n"]
        assert [entry.message for entry in app.logs.fetch(since=since, search_text="finished")] == [
            "fetched finished\n"
        ]
        assert list(app.logs.fetch(since=since - timedelta(hours=1), until=since)) == []
    env = {**os.environ, **modal_emulator.client_variables()}
    result = subprocess.run(
        [sys.executable, "-m", "modal", "app", "logs", app.app_id, "--tail", "2"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "fetched complains" in result.stdout and "fetched finished" in result.stdout
    assert "fetched started" not in result.stdout
