"""The WebSocket frames web builds itself: byte for byte what the protocol library would send."""

from __future__ import annotations

import pytest
from wsproto.frame_protocol import FrameProtocol

from app.websocket import _text_frame


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 70_000])
def test_a_text_frame_is_what_wsproto_sends_for_the_same_message(size: int) -> None:
    text = ("é" * size)[:size] if size % 2 else "x" * size
    assert _text_frame(text) == FrameProtocol(client=False, extensions=[]).send_data(text, fin=True)
