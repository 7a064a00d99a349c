"""Message payloads and the sealed local log."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agentvault_client.errors import BadEnvelopeError, PayloadTooLargeError
from agentvault_client.messages import (
    MAX_BODY_BYTES,
    MessageLog,
    decode_payload,
    encode_payload,
)

TEXT = 'Привет 👋\nsecond line with "quotes" and \\ backslashes\n'


def test_a_payload_round_trips_byte_for_byte() -> None:
    data = encode_payload(TEXT, room_id="r1", client_message_id="c1", reply_to="m0")
    header, text = decode_payload(data)

    assert text == TEXT
    assert header["room"] == "r1"
    assert header["id"] == "c1"
    assert header["reply_to"] == "m0"
    assert header["kind"] == "text"


def test_a_60_kib_body_fits_and_a_larger_one_is_refused() -> None:
    encode_payload("x" * 61440, room_id="r", client_message_id="c")
    with pytest.raises(PayloadTooLargeError):
        encode_payload("x" * (MAX_BODY_BYTES + 1), room_id="r", client_message_id="c")


@pytest.mark.parametrize(
    "data", [b"no header", b'{"v":2,"kind":"text","room":"r"}\nx', b"[1]\nx"]
)
def test_a_malformed_payload_is_rejected(data: bytes) -> None:
    with pytest.raises(BadEnvelopeError):
        decode_payload(data)


def _fields(seq: int, text: str = TEXT) -> dict[str, Any]:
    return {
        "seq": seq,
        "message_id": f"m{seq}",
        "room_id": "r1",
        "sender_device_id": "d1",
        "sender_member_id": "u1",
        "server_ts": "",
        "kind": "text",
        "text": text,
    }


def test_the_log_keeps_order_dedupes_and_seals_the_text(tmp_path: Path) -> None:
    log = MessageLog.open(tmp_path / "messages.db", b"k" * 32)

    assert log.add(_fields(1, "secret one")) is True
    assert log.add(_fields(2, "secret two")) is True
    assert log.add(_fields(1, "secret one")) is False
    assert log.last_seq == 2

    pending = log.pending()
    assert [m.text for m in pending] == ["secret one", "secret two"]
    log.mark_handled(pending[0].local_id)
    assert [m.seq for m in log.pending()] == [2]
    assert log.counts() == (2, 1)
    log.close()

    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir())
    assert b"secret one" not in raw and b"secret two" not in raw
    assert "secret" not in repr(pending[0])


def test_last_seq_never_goes_back(tmp_path: Path) -> None:
    log = MessageLog.open(tmp_path / "messages.db", b"k" * 32)
    log.set_last_seq(7)
    log.set_last_seq(3)
    assert log.last_seq == 7
