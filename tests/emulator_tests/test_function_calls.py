"""The output bookkeeping of a function call, without a server."""

from __future__ import annotations

import asyncio

from modal_proto import api_pb2

from tests.emulator.calls import FunctionCall, format_entry_id, parse_entry_id


def _call_with_outputs(sizes: list[int]) -> FunctionCall:
    call = FunctionCall(
        "fc-test", function_id="fu-test", invocation_type=api_pb2.FUNCTION_CALL_INVOCATION_TYPE_SYNC
    )
    for index, size in enumerate(sizes):
        item = call.add_input(idx=index, input=api_pb2.FunctionInput(data_format=api_pb2.DATA_FORMAT_PICKLE))
        result = api_pb2.GenericResult(status=api_pb2.GenericResult.GENERIC_STATUS_SUCCESS, data=b"x" * size)
        call.add_output(
            item, api_pb2.FunctionGetOutputsItem(input_id=item.input_id, idx=index, result=result)
        )
    return call


def test_outputs_come_in_pages_and_the_cursor_walks_through_them():
    call = _call_with_outputs([600, 600, 600])
    page, cursor = asyncio.run(call.wait_outputs(after_entry=0, timeout=0, max_bytes=1000))
    assert [output.idx for output in page] == [0] and cursor == 1
    page, cursor = asyncio.run(call.wait_outputs(after_entry=cursor, timeout=0, max_bytes=2000))
    assert [output.idx for output in page] == [1, 2] and cursor == 3


def test_an_output_larger_than_a_page_still_comes_alone():
    call = _call_with_outputs([5000])
    page, cursor = asyncio.run(call.wait_outputs(after_entry=0, timeout=0, max_bytes=1000))
    assert len(page) == 1 and cursor == 1


def test_waiting_without_new_outputs_returns_nothing_at_the_timeout():
    call = _call_with_outputs([10])
    page, cursor = asyncio.run(call.wait_outputs(after_entry=1, timeout=0.01, max_bytes=1000))
    assert page == [] and cursor == 1
    assert call.num_unfinished == 0


def test_entry_ids_round_trip_and_tolerate_modal_initial_cursor():
    assert parse_entry_id(format_entry_id(12)) == 12
    assert parse_entry_id("0-0") == 0
    assert parse_entry_id("") == 0
