"""The platform around calls: timeouts, retries, concurrency limits, detached apps, logs, auth, TLS."""

from __future__ import annotations

import hashlib
import os
import ssl
import time

import certifi
import modal
import pytest
import trustme
from modal.exception import AuthError, FunctionTimeoutError, NotFoundError, UnimplementedError

from tests.emulator import run_emulator

image = modal.Image.debian_slim().pip_install("six==1.16.0")


# Functions are built inside helpers so that modal pickles them by value: a module-level function of
# this (unshipped) test module would be pickled by reference and fail to load in the container.


def _wait_for_file(app: modal.App, name: str, **options) -> modal.Function:
    def wait_for_file(path: str) -> str:
        import pathlib
        import time

        while not pathlib.Path(path).exists():
            time.sleep(0.05)
        return "released"

    return app.function(image=image, serialized=True, name=name, **options)(wait_for_file)


def _fail_until_third_attempt(app: modal.App, name: str, **options) -> modal.Function:
    def fail_until_third_attempt(counter: str) -> int:
        import pathlib

        path = pathlib.Path(counter)
        attempts = int(path.read_text()) + 1 if path.exists() else 1
        path.write_text(str(attempts))
        if attempts < 3:
            raise RuntimeError(f"attempt {attempts} fails")
        return attempts

    return app.function(image=image, serialized=True, name=name, **options)(fail_until_third_attempt)


def _container_pid(app: modal.App, name: str, **options) -> modal.Function:
    def container_pid(_: int) -> int:
        import os
        import time

        time.sleep(0.3)  # work long enough that a limit of two containers is actually reached
        return os.getpid()

    return app.function(image=image, serialized=True, name=name, **options)(container_pid)


def test_timeout_raises_function_timeout_error(modal_emulator, tmp_path):
    app = modal.App("emulator-timeout")
    waits = _wait_for_file(app, "waits", timeout=1)
    with app.run(), pytest.raises(FunctionTimeoutError):
        waits.remote(str(tmp_path / "never"))


def test_retries_run_a_failing_input_again(modal_emulator, tmp_path):
    app = modal.App("emulator-retries")
    retries = modal.Retries(max_retries=2, initial_delay=0.0, backoff_coefficient=1.0)
    flaky = _fail_until_third_attempt(app, "flaky", retries=retries)
    with app.run():
        assert flaky.remote(str(tmp_path / "counter")) == 3
    assert modal_emulator.recorder.function("flaky").retries == 2
    assert 3 in modal_emulator.recorder.attempts.values()


def test_without_retries_the_first_failure_is_final(modal_emulator, tmp_path):
    app = modal.App("emulator-no-retries")
    flaky = _fail_until_third_attempt(app, "flaky_once")
    with app.run(), pytest.raises(RuntimeError, match="attempt 1 fails"):
        flaky.remote(str(tmp_path / "counter"))


def test_max_containers_bounds_the_containers_of_a_function(modal_emulator):
    app = modal.App("emulator-max-containers")
    pid = _container_pid(app, "pid", max_containers=2)
    with app.run():
        pids = list(pid.map(range(8)))
    record = modal_emulator.recorder.function("pid")
    assert record.max_containers == 2
    assert len(set(pids)) <= 2
    assert record.peak_running <= 2


def test_detached_app_keeps_spawned_calls_running(modal_emulator, tmp_path):
    app = modal.App("emulator-detached")
    waits = _wait_for_file(app, "detached_waits")
    release = tmp_path / "release"
    with app.run(detach=True):
        call_id = waits.spawn(str(release)).object_id
    release.touch()
    assert modal.FunctionCall.from_id(call_id).get(timeout=30) == "released"


def test_ephemeral_app_stops_its_calls_when_the_client_leaves(modal_emulator, tmp_path):
    app = modal.App("emulator-ephemeral")
    waits = _wait_for_file(app, "ephemeral_waits")
    with app.run():
        call_id = waits.spawn(str(tmp_path / "never")).object_id
    with pytest.raises(modal.exception.RemoteError, match="cancelled"):
        modal.FunctionCall.from_id(call_id).get(timeout=30)


def test_logs_stream_to_the_client_output(modal_emulator, capsys):
    app = modal.App("emulator-logs")

    def shout() -> None:
        print("a line from the container")

    shout_fn = app.function(image=image, serialized=True, name="shout")(shout)
    with modal.enable_output(), app.run():
        shout_fn.remote()
    assert "a line from the container" in capsys.readouterr().out
    assert "a line from the container" in modal_emulator.recorder.log_text("shout")


def test_secrets_reach_the_container_and_options_reach_the_recorder(modal_emulator):
    app = modal.App("emulator-options")

    def read_secret() -> str:
        import os

        return os.environ["EMULATOR_SECRET"]

    options = dict(
        image=image,
        serialized=True,
        secrets=[modal.Secret.from_dict({"EMULATOR_SECRET": "s3cret"})],
        volumes={"/data": modal.Volume.from_name("emulator-volume", create_if_missing=True)},
    )
    reader = app.function(**options, name="read_secret")(read_secret)
    resources = dict(gpu="A100:2", cpu=2.0, memory=2048, timeout=600, max_containers=5, region="us-east")
    app.function(**options, **resources, name="gpu")(read_secret)
    with app.run():
        assert reader.remote() == "s3cret"
    gpu = modal_emulator.recorder.function("gpu")
    assert gpu.gpus == [("A100", 2)]
    assert (gpu.cpu, gpu.memory_mb, gpu.timeout_secs, gpu.max_containers) == (2.0, 2048, 600, 5)
    assert gpu.regions == ["us-east"]
    assert gpu.volumes == {"/data": "emulator-volume"}
    assert len(gpu.secrets) == 1
    assert modal_emulator.recorder.function("read_secret").gpus == []


def test_large_mounted_file_goes_through_a_blob(modal_emulator, tmp_path):
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(5 * 1024 * 1024))
    app = modal.App("emulator-big-mount")

    def digest_of_mounted_file() -> str:
        import hashlib

        return hashlib.sha256(open("big.bin", "rb").read()).hexdigest()

    digest = app.function(image=image.add_local_file(big, "/root/big.bin"), serialized=True, name="digest")(
        digest_of_mounted_file
    )
    with modal_emulator.recorder.counting() as rpcs, app.run():
        remote_digest = digest.remote()
    expected = hashlib.sha256(big.read_bytes()).hexdigest()
    assert remote_digest == expected
    assert modal_emulator.recorder.mounted_files("digest")["/root/big.bin"] == expected
    assert rpcs["BlobCreate"] >= 1


def test_invalid_token_is_an_auth_error(modal_emulator):
    app = modal.App("emulator-auth")
    _container_pid(app, "never_created")
    with modal_emulator.client_environment(token_secret="as-wrong"), pytest.raises(AuthError), app.run():
        pass


def test_an_unimplemented_rpc_fails_loudly_and_is_recorded(modal_emulator):
    with pytest.raises(UnimplementedError):
        modal.Function.from_name("emulator-deployed", "missing").hydrate()
    assert "FunctionGet" in modal_emulator.recorder.unimplemented


def test_served_over_tls(tmp_path, monkeypatch):
    authority = trustme.CA()
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    authority.issue_cert("localhost").configure_cert(server_context)
    bundle = tmp_path / "ca.pem"
    authority.cert_pem.write_to_path(str(bundle))
    # grpclib verifies the server against certifi's bundle; trust the throwaway CA instead.
    monkeypatch.setattr(certifi, "where", lambda: str(bundle))
    app = modal.App("emulator-tls")
    _container_pid(app, "tls_created")
    with run_emulator(ssl_context=server_context) as emulator, emulator.client_environment():
        assert emulator.url.startswith("https://")
        with app.run():
            pass
        assert emulator.recorder.function("tls_created")


def test_spawned_outputs_can_be_fetched_again(modal_emulator):
    app = modal.App("emulator-refetch")
    pid = _container_pid(app, "pid_again")
    with app.run():
        call = pid.spawn(0)
        first = call.get(timeout=30)
        assert modal.FunctionCall.from_id(call.object_id).get(timeout=30) == first


def _read_secret(app: modal.App, name: str, secret: modal.Secret) -> modal.Function:
    def read_secret() -> str:
        import os

        return os.environ["EMULATOR_SECRET"]

    return app.function(image=image, serialized=True, secrets=[secret], name=name)(read_secret)


def test_named_secret_defined_on_the_emulator(modal_emulator):
    modal_emulator.add_secret("emulator-named", {"EMULATOR_SECRET": "named value"})
    app = modal.App("emulator-named-secret")
    reader = _read_secret(app, "named_reader", modal.Secret.from_name("emulator-named"))
    with app.run():
        assert reader.remote() == "named value"
    assert modal_emulator.recorder.function("named_reader").secrets == ["emulator-named"]


def test_missing_named_secret_is_not_found(modal_emulator):
    app = modal.App("emulator-missing-secret")
    _read_secret(app, "missing_reader", modal.Secret.from_name("emulator-missing"))
    with pytest.raises(NotFoundError, match="emulator-missing"), app.run():
        pass


def test_idle_containers_scale_down_after_the_window(modal_emulator):
    app = modal.App("emulator-scaledown")

    def container_pid() -> int:
        import os

        return os.getpid()

    pid_fn = app.function(image=image, serialized=True, scaledown_window=2, name="scaledown_pid")(
        container_pid
    )
    with app.run():
        first = pid_fn.remote()
        assert pid_fn.remote() == first  # reused while warm
        deadline = time.monotonic() + 30
        while _process_exists(first):
            assert time.monotonic() < deadline, "the idle container was never stopped"
            time.sleep(0.1)
        assert pid_fn.remote() != first


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_an_app_whose_client_stops_heartbeating_is_stopped(tmp_path):
    app = modal.App("emulator-silent-client")
    waits = _wait_for_file(app, "silent_waits")
    # Modal's client heartbeats every 15 s, so with a 1 s limit the app looks abandoned at once.
    with run_emulator(heartbeat_timeout=1) as emulator, emulator.client_environment():
        running = app.run()
        running.__enter__()
        try:
            call = waits.spawn(str(tmp_path / "never"))
            with pytest.raises(modal.exception.RemoteError, match="cancelled"):
                call.get(timeout=30)
            assert emulator.recorder.apps[app.app_id].states[-1] == "stopped"
        finally:
            running.__exit__(None, None, None)
