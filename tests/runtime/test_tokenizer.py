"""Tokenizer wrapper and the UTF-8-safe stream decoder (vendored byte-level BPE tokenizer)."""

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stagedx.errors import StagedxError
from stagedx.runtime.tokenizer import REPLACEMENT, StreamDecoder, Tokenizer

TOKENIZER = Path(__file__).resolve().parents[2] / "models/stdlib-code-pair/oracle/tokenizer.json"


@pytest.fixture(scope="module")
def tok():
    return Tokenizer(TOKENIZER)


def _stream(tok, ids, chunks):
    dec, pieces, i = StreamDecoder(tok), [], 0
    for size in chunks:
        pieces.append(dec.push(ids[i : i + size]))
        i += size
    pieces.append(dec.push(ids[i:]))
    pieces.append(dec.flush())
    return pieces


def test_encode_decode_round_trip(tok):
    text = "def f(x):\n    return x  # é→😀\n"
    ids = tok.encode(text)
    assert ids.dtype == np.int64 and ids.ndim == 1 and len(ids) > 5
    assert tok.decode(ids) == text
    assert tok.vocab_size >= int(ids.max()) + 1


def test_multibyte_characters_are_split_across_tokens_and_held_back(tok):
    text = "é→😀 naïve — 日本語 x"
    ids = tok.encode(text).tolist()
    # the fixture is only meaningful if some token ends inside a character
    assert any(tok.decode(ids[: i + 1]).endswith(REPLACEMENT) for i in range(len(ids)))
    pieces = _stream(tok, ids, [1] * len(ids))
    assert all(REPLACEMENT not in p for p in pieces)
    assert "".join(pieces) == text


@settings(max_examples=60, deadline=None)
@given(
    text=st.text(st.sampled_from(list("ab é→😀日\n_(")) | st.characters(blacklist_categories=("Cs",)), max_size=40),
    chunks=st.lists(st.integers(1, 4), max_size=40),
)
def test_stream_pieces_never_split_a_character(tok, text, chunks):
    ids = tok.encode(text).tolist()
    pieces = _stream(tok, ids, chunks)
    if REPLACEMENT not in text:
        assert all(REPLACEMENT not in p for p in pieces)
    assert "".join(pieces) == tok.decode(ids)


def test_flush_emits_an_incomplete_tail_and_bad_file_is_a_clear_error(tok, tmp_path):
    ids = tok.encode("😀").tolist()
    dec = StreamDecoder(tok)
    assert dec.push(ids[:-1]) == ""
    assert dec.flush().endswith(REPLACEMENT)
    assert dec.flush() == ""
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{not json")
    with pytest.raises(StagedxError, match="cannot load tokenizer"):
        Tokenizer(bad)


def test_invalid_unicode_prompt_is_a_clear_error():
    from stagedx.errors import StagedxError

    with pytest.raises(StagedxError, match="not valid Unicode"):
        Tokenizer(TOKENIZER).encode("abc\ud800")


def test_bos_is_prepended_once_when_the_bundle_asks():
    plain, led = Tokenizer(TOKENIZER), Tokenizer(TOKENIZER, bos_token_id=0)
    ids = plain.encode("def f(x):")
    assert plain.bos_token_id is None and ids[0] != 0
    assert list(led.encode("def f(x):")) == [0, *ids]
    assert list(led.encode("def f(x):", add_bos=False)) == list(ids)
    assert list(led.encode("")) == [0]
    # a text that already starts with it (a chat template rendering {{ bos_token }}) keeps one
    text = led.decode([0]) + "def f(x):"
    assert list(led.encode(text)) == list(plain.encode(text)) and led.encode(text)[0] == 0
