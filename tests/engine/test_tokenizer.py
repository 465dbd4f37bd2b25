from banaserve.engine.tokenizer import IncrementalDetokenizer, TextTokenizer


def test_round_trip_and_incremental_deltas_never_split_characters(tiny_llama):
    tok = TextTokenizer(tiny_llama)
    text = "héllo wörld — 東京 🙂 def f(x): return x ∑"
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    detok = IncrementalDetokenizer(tok)
    deltas = [detok.add([t]) for t in ids]
    assert "".join(deltas) == text
    assert all("\ufffd" not in d for d in deltas)
