"""Every private name of `modal` mini uses, in one place, each with the public API it stands in for.

Modal's public client cannot tie an output to the input it answers, store a token without a subprocess, or
say which proxy it will use; these names can. They are pinned with `modal` itself (`pyproject.toml`), and
`tests/test_modal_private.py` checks that each one is still what mini expects (a coroutine function taking
these arguments, a class with this method, a message with this field), so an upgrade that moves one fails
there, by name, before anything runs. The rest of mini imports them from here and nowhere else.
"""

from __future__ import annotations

import modal.config

# The implementation behind `modal.Function` (synchronicity wraps it): its hydrated size limits
# (`_max_object_size_bytes`, `_max_async_object_size_bytes`), above which an input goes through the blob
# store, its method name and its client. No public accessor gives any of them.
from modal._functions import _Function

# Decoding a result as modal's map does (it also re-attaches the client to Modal objects inside the value).
# The public API decodes only inside `Function.map`/`.remote`, which hide the input an output answers.
from modal._serialization import deserialize

# synchronicity's synchronizer: the event loop modal's client lives on (`_get_loop`), the implementation
# object behind a public wrapper (`_translate_in`), and a blocking form of an async private function
# (`create_blocking`). Modal publishes blocking and `.aio` forms of its public API only.
from modal._utils.async_utils import synchronizer

# Payloads over the inline limit travel as blobs; public `map` does this internally and exposes nothing.
# `_ByteBudget` bounds the bytes a volume upload (`Volume.batch_upload`) holds in flight: modal sizes it at
# half the free memory, up to 2 GiB, and offers no public setting; mini gives each upload a small one
# (`mini.modal_backend.volumes`), so that uploading a large file keeps memory flat.
from modal._utils.blob_utils import _ByteBudget, blob_download, blob_upload_with_results

# The inline-size test and the long-poll timeouts modal's own map uses for FunctionGetOutputs; and the
# reader of a call's data-out stream, which `remote_gen` uses and which has no public form for a call that
# mini started itself (a generator's values, as they come).
from modal._utils.function_utils import (
    ATTEMPT_TIMEOUT_GRACE_PERIOD,
    OUTPUTS_TIMEOUT,
    _stream_function_call_data,
    should_upload,
)

# gRPC retry policies, as modal's map retries FunctionPutInputs and FunctionGetOutputs.
from modal._utils.grpc_utils import Retry

# The proxy modal's client uses for a host (HTTPS_PROXY / ALL_PROXY / NO_PROXY, unless disable_api_proxy is
# set), so the reachability probe walks the client's own route. Modal has no public way to ask for it.
from modal._utils.proxy_support import get_proxy_url

# The client behind `modal.Client`, for its gRPC stub (`_Client._stub`) and `from_env()` on the client's own
# loop. The public client has no stub: mini speaks FunctionMap, FunctionPutInputs, FunctionGetOutputs,
# FunctionRetryInputs and FunctionCallCancel itself (`_invocation`), because only the raw outputs name the
# input (`idx`) they answer.
from modal.client import _Client

# Modal's per-input retry schedule (delays from a FunctionRetryPolicy). Spelled as public, but undocumented,
# and it takes a wire message; the public `modal.Retries` only describes a policy.
from modal.retries import RetryManager

# Storing a token (what `modal token set` / `modal token new` do). Modal offers these only as CLI commands;
# running those as subprocesses would pass the secret through a command line or a pipe.
from modal.token_flow import _new_token, _set_token

# The wire protocol: the requests, outputs and enums of Modal's gRPC API, which the public client never
# exposes. Its messages change with the client, so every name mini uses is checked by the test.
from modal_proto import api_pb2


def active_profile() -> str:
    """The Modal profile in use now (MODAL_PROFILE, else the active one in the config file, else "default").

    Read at each call: modal reassigns it when a profile is activated. Public `modal.config` lists the
    profiles (`config_profiles()`) but does not say which one is in use.

        active_profile()   # 'default'
    """
    return str(modal.config._profile)


__all__ = [
    "ATTEMPT_TIMEOUT_GRACE_PERIOD",
    "_ByteBudget",
    "OUTPUTS_TIMEOUT",
    "Retry",
    "RetryManager",
    "_Client",
    "_Function",
    "_new_token",
    "_set_token",
    "_stream_function_call_data",
    "active_profile",
    "api_pb2",
    "blob_download",
    "blob_upload_with_results",
    "deserialize",
    "get_proxy_url",
    "should_upload",
    "synchronizer",
]
