"""modal's private names that mini uses (`mini.modal_backend._private`) are there and still what mini expects.

An upgrade of the pinned `modal` that moves, renames or reshapes one of them fails here, naming it, before
the emulator tests fail somewhere downstream of it.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mini.modal_backend import _private

SRC = Path(__file__).resolve().parents[1] / "src" / "mini"


def _takes(function: Callable[..., Any], *names: str) -> None:
    parameters = inspect.signature(function).parameters
    missing = [name for name in names if name not in parameters]
    assert not missing, f"{function.__qualname__} no longer takes {missing}"


def _coroutine(*names: str) -> Callable[[Any], None]:
    def check(value: Any) -> None:
        assert inspect.iscoroutinefunction(value), f"{value!r} is not a coroutine function"
        _takes(value, *names)

    return check


def _async_generator(*names: str) -> Callable[[Any], None]:
    def check(value: Any) -> None:
        assert inspect.isasyncgenfunction(value), f"{value!r} is not an async generator function"
        _takes(value, *names)

    return check


def _function(*names: str) -> Callable[[Any], None]:
    def check(value: Any) -> None:
        assert inspect.isfunction(value) and not inspect.iscoroutinefunction(value), f"{value!r}"
        _takes(value, *names)

    return check


def _async_generator(*names: str) -> Callable[[Any], None]:
    def check(value: Any) -> None:
        assert inspect.isasyncgenfunction(value), f"{value!r} is not an async generator function"
        _takes(value, *names)

    return check


def _timeout(value: Any) -> None:
    assert isinstance(value, (int, float)) and value > 0


def _retry(value: Any) -> None:
    fields = {field.name for field in dataclasses.fields(value)}
    assert {"max_retries", "max_delay", "additional_status_codes", "attempt_timeout"} <= fields
    value(max_retries=None, max_delay=15, additional_status_codes=[], attempt_timeout=1.0)


def _retry_manager(value: Any) -> None:
    policy = _private.api_pb2.FunctionRetryPolicy(retries=2, initial_delay_ms=1000, backoff_coefficient=2.0)
    manager = value(policy)
    assert manager.retry_count == 0
    delays = [manager.get_delay_ms(), manager.get_delay_ms(), manager.get_delay_ms()]
    assert delays[0] is not None and delays[1] is not None and delays[1] > delays[0]
    assert delays[2] is None, "the third retry of a policy of two is refused"
    assert manager.retry_count == 3


def _client(value: Any) -> None:
    assert inspect.isclass(value)
    assert inspect.iscoroutinefunction(value.from_env)
    assert isinstance(inspect.getattr_static(value, "_stub"), property)


def _function_class(value: Any) -> None:
    assert inspect.isclass(value)
    assert isinstance(inspect.getattr_static(value, "client"), property)
    source = inspect.getsource(value)
    for attribute in ("_use_method_name", "_max_object_size_bytes", "_max_async_object_size_bytes"):
        assert f"self.{attribute} =" in source, f"_Function no longer sets {attribute}"


def _byte_budget(value: Any) -> None:
    import asyncio

    import modal.volume

    budget = value(1 << 20)
    assert inspect.isfunction(value.from_system_memory.__func__), "_ByteBudget has no from_system_memory"

    async def take() -> None:
        async with budget.acquire(1 << 19):
            pass

    asyncio.run(take())
    # mini replaces the budget a volume upload gets (`mini.modal_backend.volumes._bound_in_flight`).
    source = inspect.getsource(modal.volume._VolumeUploadContextManager)
    assert "self._byte_budget = _ByteBudget.from_system_memory()" in source, "uploads get no budget"
    assert "byte_budget=self._byte_budget" in source, "uploads no longer use their budget"


def _synchronizer(value: Any) -> None:
    for method in ("_get_loop", "_translate_in", "create_blocking"):
        assert callable(getattr(value, method, None)), f"synchronizer has no {method}"


def _active_profile(value: Any) -> None:
    import modal.config

    before = modal.config._profile
    try:
        modal.config._profile = "mini-test-profile"
        assert value() == "mini-test-profile", "the profile must be read at each call"
    finally:
        modal.config._profile = before


def _proxy_url(value: Any) -> None:
    _takes(value, "host", "use_ssl")
    with pytest.MonkeyPatch.context() as patch:
        for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "NO_PROXY", "no_proxy"):
            patch.delenv(name, raising=False)
        patch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
        assert value("api.example", use_ssl=True) == "http://proxy.example:3128"
        patch.setenv("NO_PROXY", "api.example")
        assert value("api.example", use_ssl=True) is None


def _should_upload(value: Any) -> None:
    _takes(
        value,
        "num_bytes",
        "max_object_size_bytes",
        "max_async_object_size_bytes",
        "function_call_invocation_type",
    )
    sync = _private.api_pb2.FUNCTION_CALL_INVOCATION_TYPE_SYNC
    assert value(10, 100, 100, sync) is False
    assert value(1000, 100, 100, sync) is True


def _protocol(value: Any) -> None:
    assert inspect.ismodule(value) and hasattr(value, "DESCRIPTOR")


EXPECTED: dict[str, Callable[[Any], None]] = {
    "ATTEMPT_TIMEOUT_GRACE_PERIOD": _timeout,
    "OUTPUTS_TIMEOUT": _timeout,
    "Retry": _retry,
    "RetryManager": _retry_manager,
    "_ByteBudget": _byte_budget,
    "_Client": _client,
    "_Function": _function_class,
    "_new_token": _coroutine("profile", "activate", "verify"),
    "_stream_function_call_data": _async_generator("client", "stub", "function_call_id", "variant"),
    "_set_token": _coroutine("token_id", "token_secret", "profile", "activate", "verify"),
    "active_profile": _active_profile,
    "api_pb2": _protocol,
    "blob_download": _coroutine("blob_id", "stub"),
    "blob_upload_with_results": _coroutine("payload", "stub"),
    "deserialize": _function("s", "client"),
    "get_proxy_url": _proxy_url,
    "should_upload": _should_upload,
    "synchronizer": _synchronizer,
}


def test_every_exported_name_has_an_expectation() -> None:
    assert sorted(EXPECTED) == sorted(_private.__all__)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_private_name_is_what_mini_expects(name: str) -> None:
    EXPECTED[name](getattr(_private, name))


def _nodes() -> Iterator[ast.AST]:
    for path in sorted(SRC.rglob("*.py")):
        yield from ast.walk(ast.parse(path.read_text(), filename=str(path)))


def _name(node: ast.AST) -> str | None:
    """`x` for `x` and for `a.x`: what a call's receiver is called."""
    if isinstance(node, ast.Name):
        return node.id
    return node.attr if isinstance(node, ast.Attribute) else None


def _calls_on(*receivers: str) -> Iterator[tuple[str, ast.Call]]:
    """(method, call) for every call `r.method(...)` in mini's source whose receiver is named one of these."""
    for node in _nodes():
        if not isinstance(node, ast.Call):
            continue
        if isinstance(node.func, ast.Attribute) and _name(node.func.value) in receivers:
            yield node.func.attr, node


def test_every_protocol_message_mini_builds_has_the_fields_it_sets() -> None:
    named: set[str] = set()
    built: dict[str, set[str]] = {}
    for node in _nodes():
        if isinstance(node, ast.Attribute) and _name(node.value) == "api_pb2":
            named.add(node.attr)
    for message, call in _calls_on("api_pb2"):
        built.setdefault(message, set()).update(keyword.arg for keyword in call.keywords if keyword.arg)
    assert "FunctionMapRequest" in built, "the scan found none of the messages _invocation builds"
    missing = sorted(name for name in named if not hasattr(_private.api_pb2, name))
    assert not missing, f"modal_proto.api_pb2 no longer has {missing}"
    for name, fields in built.items():
        known = set(getattr(_private.api_pb2, name).DESCRIPTOR.fields_by_name)
        assert fields <= known, f"api_pb2.{name} has no field {sorted(fields - known)}"


def test_every_rpc_mini_calls_is_on_modals_stub() -> None:
    import modal  # noqa: F401  (modal_proto's gRPC modules must be imported after modal itself)
    from modal_proto.api_grpc import ModalClientBase

    called = {method for method, _ in _calls_on("stub", "_stub")}
    assert {"FunctionMap", "FunctionPutInputs", "FunctionGetOutputs", "FunctionCallFetch"} <= called, called
    missing = sorted(name for name in called if not hasattr(ModalClientBase, name))
    assert not missing, f"modal's gRPC API no longer has {missing}"
