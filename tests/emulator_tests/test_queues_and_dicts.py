"""Queues and Dicts through the modal client, from the test process and from inside containers."""

from __future__ import annotations

import queue

import modal
import pytest
from modal.exception import NotFoundError

image = modal.Image.debian_slim()


def test_a_queue_is_fifo_per_partition_and_reads_in_place(modal_emulator):
    with modal.Queue.ephemeral() as q:
        q.put("first")
        q.put_many([2, 3, {"four": 4}])
        q.put("elsewhere", partition="other")
        assert q.len() == 4 and q.len(partition="other") == 1 and q.len(total=True) == 5
        assert list(q.iterate()) == ["first", 2, 3, {"four": 4}]  # read in place
        assert q.len() == 4
        assert q.get() == "first"
        assert q.get_many(2) == [2, 3]
        assert q.get_many(10) == [{"four": 4}]  # fewer than asked for: all there are
        assert q.get(partition="other") == "elsewhere"
        assert q.get(block=False) is None
        assert q.get_many(3, block=False) == []
        with pytest.raises(queue.Empty):
            q.get(timeout=0.2)
        q.put_many([1, 2], partition="a")
        q.put_many([3], partition="b")
        q.clear(partition="a")
        assert (q.len(partition="a"), q.len(partition="b")) == (0, 1)
        q.clear(all=True)
        assert q.len(total=True) == 0


def test_a_full_partition_refuses_puts(modal_emulator):
    with modal.Queue.ephemeral() as q:
        q.put_many(list(range(5000)))
        with pytest.raises(queue.Full):
            q.put("one too many", block=False)
        with pytest.raises(queue.Full):
            q.put("one too many", timeout=0.5)
        q.put("elsewhere", partition="other")  # another partition has room
        assert q.get() == 0
        q.put("now there is room", block=False)
        assert q.len() == 5000


def test_containers_and_the_client_share_queues_and_blocking_gets_wait(modal_emulator):
    app = modal.App("emulator-queue-containers")

    def relay(inbox: modal.Queue, outbox: modal.Queue) -> str:
        value = inbox.get(timeout=30)  # blocks until the client puts
        outbox.put(f"relayed {value}")
        return "done"

    relay_fn = app.function(image=image, serialized=True, name="relay")(relay)
    with modal.Queue.ephemeral() as inbox, modal.Queue.ephemeral() as outbox, app.run():
        call = relay_fn.spawn(inbox, outbox)
        inbox.put("hello")
        assert outbox.get(timeout=30) == "relayed hello"
        assert call.get(timeout=30) == "done"


def test_named_queues_and_dicts_are_found_listed_and_deleted(modal_emulator):
    named_queue = modal.Queue.from_name("emulator-named-queue", create_if_missing=True)
    named_queue.put("kept")
    assert modal.Queue.from_name("emulator-named-queue").get() == "kept"
    assert "emulator-named-queue" in [q.name for q in modal.Queue.objects.list()]
    modal.Queue.objects.delete("emulator-named-queue")
    with pytest.raises(NotFoundError):
        modal.Queue.from_name("emulator-named-queue").hydrate()

    named_dict = modal.Dict.from_name("emulator-named-dict", create_if_missing=True)
    named_dict["kept"] = 1
    assert modal.Dict.from_name("emulator-named-dict")["kept"] == 1
    assert "emulator-named-dict" in [d.name for d in modal.Dict.objects.list()]
    modal.Dict.objects.delete("emulator-named-dict")
    with pytest.raises(NotFoundError):
        modal.Dict.from_name("emulator-named-dict").hydrate()


def test_a_dict_behaves_like_a_mapping(modal_emulator):
    with modal.Dict.ephemeral() as d:
        d["a"] = 1
        d.put(("tuple", "key"), [1, 2])
        d.update({"b": 2}, c=3)
        assert d["a"] == 1 and d.get(("tuple", "key")) == [1, 2] and d.get("missing", "default") == "default"
        assert "b" in d and d.contains("c") and not d.contains("missing")
        assert d.len() == 4
        assert d.put("a", 100, skip_if_exists=True) is False and d["a"] == 1
        assert d.put("new", 5, skip_if_exists=True) is True
        assert d.pop("new") == 5 and d.pop("new", None) is None
        with pytest.raises(KeyError):
            d["missing"]
        with pytest.raises(KeyError):
            d.pop("missing")
        del d["c"]
        assert sorted(d.keys(), key=repr) == sorted(["a", ("tuple", "key"), "b"], key=repr)
        assert sorted(d.values(), key=repr) == sorted([1, [1, 2], 2], key=repr)
        assert dict(d.items()) == {"a": 1, ("tuple", "key"): [1, 2], "b": 2}
        d.clear()
        assert d.len() == 0 and list(d.keys()) == []


def test_a_container_writes_a_dict_the_client_reads(modal_emulator):
    app = modal.App("emulator-dict-containers")

    def record(results: modal.Dict, key: str) -> None:
        results[key] = {"squared": len(key) ** 2}

    record_fn = app.function(image=image, serialized=True, name="record")(record)
    with modal.Dict.ephemeral() as results, app.run():
        list(record_fn.map([results] * 3, ["a", "bb", "ccc"]))
        assert dict(results.items()) == {"a": {"squared": 1}, "bb": {"squared": 4}, "ccc": {"squared": 9}}
