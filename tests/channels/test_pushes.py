"""Pure bytes: the publication pushes a channel builds once, reads its position from, and
merges with history."""

from __future__ import annotations

import json

from harpy.channels._channel import position_of, push_prefix, wrap_raw
from harpy.channels._endpoint import _merge, _pub
from harpy.protocol import OP_BINARY, OP_TEXT, Message
from harpy.pubsub.history import Stored


def _push(channel: str, offset: int, epoch: str, data: object) -> Message:
    body = b'{"data":' + json.dumps(data).encode() + b"}"
    head = push_prefix(channel) + body[:-1] + b',"offset":'
    return Message(OP_TEXT, head + b"%d" % offset + b',"epoch":"' + epoch.encode() + b'"}}}')


def test_a_positioned_push_is_valid_json_and_carries_its_position() -> None:
    message = _push('odd "name",pub:', 42, "AbCdEfGh", {"offset": 7, "x": [1, 2]})
    parsed = json.loads(message.payload)
    assert parsed == {
        "push": {
            "channel": 'odd "name",pub:',
            "pub": {"data": {"offset": 7, "x": [1, 2]}, "offset": 42, "epoch": "AbCdEfGh"},
        }
    }
    assert position_of(message.payload) == (42, "AbCdEfGh")


def test_pushes_without_a_position_read_as_none() -> None:
    join = b'{"push":{"channel":"c","join":{"info":{"user":"u","client":"x"}}}}'
    assert position_of(join) == (0, "")
    assert position_of(b'{"push":{"channel":"c","pub":{"data":1}}}') == (0, "")


def test_raw_topic_messages_become_publication_pushes() -> None:
    prefix = push_prefix("news")
    as_json = wrap_raw(prefix, Message(OP_TEXT, b'{"a": 1}'))
    text = wrap_raw(prefix, Message(OP_TEXT, "plain \u00e9".encode()))
    spread = wrap_raw(prefix, Message(OP_TEXT, b'{\n"a":\n1}'))
    binary = wrap_raw(prefix, Message(OP_BINARY, b"\xff\xfe"))
    assert as_json is not None and text is not None and spread is not None
    assert json.loads(as_json.payload)["push"]["pub"] == {"data": {"a": 1}}
    assert json.loads(text.payload)["push"]["pub"] == {"data": "plain \u00e9"}
    assert b"\n" not in spread.payload  # one line: the SDKs split frames on newlines
    assert json.loads(spread.payload)["push"]["pub"] == {"data": {"a": 1}}
    assert binary is None


def test_merge_appends_held_publications_once_in_order_and_refuses_a_gap() -> None:
    recovered = [_pub(Stored(n, b'{"data":%d}' % n), "E") for n in (4, 5)]
    held = [(7, "E", _push("c", 7, "E", 7)), (5, "E", _push("c", 5, "E", 5))]
    held.append((6, "E", _push("c", 6, "E", 6)))
    merged = _merge(recovered, held, 5)
    assert merged is not None
    assert [json.loads(p)["offset"] for p in merged] == [4, 5, 6, 7]
    assert [json.loads(p)["data"] for p in merged] == [4, 5, 6, 7]
    assert _merge(recovered, [(8, "E", _push("c", 8, "E", 8))], 5) is None
