"""Batched generation (core.serving.batching) on the tiny Llama and the codeword adapter.

Concurrent requests must give exactly what the same requests give one by one, while really
sharing one `generate`: the engine's stats show the batch. Each row ends on its own (its
max_new_tokens, a stop string, its consumer going away) and an error reaches every row.
Streams are opened one after the other within the gather window, which is what clients
arriving together do; their queues hold the pieces until each is read.
"""

from __future__ import annotations

import gc
import threading

import pytest

from tests.integration.test_chat_engine import CODEWORD, GREEDY, QUESTION, shared_codeword_models

# Long enough that the streams opened one after the other land in one batch on a busy CI
# machine; a batch starts as soon as it is full (max_batch), so the tests do not wait it out.
WINDOW_MS = 2000.0


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return shared_codeword_models(tmp_path_factory)


def engine(models, max_batch: int):
    from core.serving.engine import InferenceEngine

    return InferenceEngine(models["base"], batch_window_ms=WINDOW_MS, max_batch=max_batch)


def refs_of(models):
    from core.serving.engine import AdapterRef

    return {"codeword": AdapterRef("codeword", str(models["codeword"]))}


def ask(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def settings(**kw):
    from core.serving.engine import GenerationSettings

    return GenerationSettings(**{**GREEDY, **kw})


def one_by_one(models, requests: list[dict]) -> list[str]:
    eng = engine(models, max_batch=1)
    return [eng.generate(**r) for r in requests]


def together(eng, requests: list[dict]) -> list[str]:
    streams = [eng.stream(**r) for r in requests]
    return ["".join(s) for s in streams]


class ForwardGate:
    """A torch forward hook on the model: counts forward passes, and at pass `at` waits
    until `release` is set (or raises `error`), so a test acts while a batch is mid-way."""

    def __init__(self, model, at: int, error: Exception | None = None) -> None:
        model = getattr(model, "get_base_model", lambda: model)()  # what PEFT's generate runs
        self.calls = 0
        self.at = at
        self.error = error
        self.reached = threading.Event()
        self.release = threading.Event()
        self._handle = model.register_forward_pre_hook(self)

    def __call__(self, module, args) -> None:
        self.calls += 1
        if self.calls == self.at:
            if self.error is not None:
                raise self.error
            self.reached.set()
            assert self.release.wait(60)

    def remove(self) -> None:
        self._handle.remove()


def test_concurrent_greedy_requests_share_one_batch_and_match_one_by_one(models) -> None:
    # Prompts of different lengths: the batch is left-padded with an attention mask.
    prompts = [QUESTION, "hi", "The quick brown fox jumps over the lazy dog.", "Hello there"]
    requests = [{"messages": ask(p), "settings": settings()} for p in prompts]
    expected = one_by_one(models, requests)
    eng = engine(models, max_batch=len(requests))
    assert together(eng, requests) == expected
    assert eng.stats.batches == 1 and eng.stats.max_batch_size == len(requests)
    assert eng.stats.generations == len(requests)


def test_a_streamed_answer_is_what_generate_and_decode_give(models) -> None:
    import torch

    eng = engine(models, max_batch=4)
    s = settings(max_new_tokens=20)
    prepared = eng.prepare(ask(QUESTION), s)
    stream = eng.stream(ask(QUESTION), settings=s)
    text = "".join(stream)
    with eng.lock, torch.inference_mode():
        out = eng.model.generate(
            input_ids=prepared.input_ids,
            attention_mask=torch.ones_like(prepared.input_ids),
            **eng._generate_kwargs(s),
        )
    new = out[0, prepared.input_ids.shape[1] :]
    assert text == eng.tokenizer.decode(new, skip_special_tokens=True)
    assert stream.prompt_tokens == prepared.input_ids.shape[1]
    assert stream.completion_tokens == len(new)
    eos = eng.tokenizer.eos_token_id
    assert stream.finish_reason == ("stop" if int(new[-1]) == eos else "length")


def test_mixed_adapters_in_one_batch_answer_each_with_its_adapter(models) -> None:
    refs = refs_of(models)
    names = ["base", "codeword", "codeword", "base", "codeword"]
    requests = [
        {"messages": ask(QUESTION), "adapter": a, "settings": settings(), "refs": refs}
        for a in names
    ]
    expected = one_by_one(models, requests)
    assert CODEWORD in expected[1] and CODEWORD not in expected[0]
    eng = engine(models, max_batch=len(requests))
    assert together(eng, requests) == expected
    assert eng.stats.batches == 1 and eng.stats.max_batch_size == len(requests)
    assert eng.stats.base_loads == 1 and eng.stats.adapter_loads == 1


def test_each_row_ends_at_its_own_limit_and_stop_string(models) -> None:
    refs = refs_of(models)
    base = {"messages": ask(QUESTION), "adapter": "codeword", "refs": refs}
    [full] = one_by_one(models, [{**base, "settings": settings()}])
    assert CODEWORD in full
    cut = full.index(" SUB")
    rows = [
        settings(),
        settings(max_new_tokens=3),
        settings(stop=["xyz", " SUB"]),  # ends before the stop string, which is never shown
        settings(stop=[full[-3:] + "\x00"]),  # held back as a possible stop, then flushed
    ]
    eng = engine(models, max_batch=len(rows))
    streams = [eng.stream(**base, settings=s) for s in rows]
    texts = ["".join(s) for s in streams]
    assert eng.stats.batches == 1 and eng.stats.max_batch_size == len(rows)

    assert texts[0] == full == texts[3]
    assert streams[0].completion_tokens == streams[3].completion_tokens
    assert streams[1].completion_tokens == 3 and streams[1].finish_reason == "length"
    assert full.startswith(texts[1]) and 0 < len(texts[1]) < len(full)
    assert texts[2] == full[:cut] and streams[2].finish_reason == "stop"
    assert streams[2].completion_tokens < streams[0].completion_tokens


def test_pieces_are_whole_characters_and_stop_strings_may_span_tokens(models) -> None:
    """The streamer fed token by token, as generate() feeds it, with text whose characters
    the tiny byte-level tokenizer splits over several tokens."""
    import torch
    from transformers import AutoTokenizer

    from core.serving.batching import BatchStreamer, GenerationStream, Request

    tok = AutoTokenizer.from_pretrained(models["base"])
    text = "Grüße: 5 € für den Hund."
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert any("\ufffd" in tok.decode([i]) for i in ids)  # some characters span tokens
    requests = [
        Request([1], key=None, max_new_tokens=100),
        Request([1], key=None, max_new_tokens=100, stop=["€ f"]),
    ]
    streams = [GenerationStream(r) for r in requests]
    streamer = BatchStreamer(tok, requests, frozenset({tok.eos_token_id}))
    streamer.put(torch.tensor([[1], [1]]))  # the prompts come first
    for i in ids:
        streamer.put(torch.tensor([i, i]))
    streamer.end()
    pieces = list(streams[0])
    assert "".join(pieces) == text and not any("\ufffd" in p for p in pieces)
    assert streams[0].finish_reason == "length"
    assert "".join(streams[1]) == "Grüße: 5 " and streams[1].finish_reason == "stop"
    assert streams[1].completion_tokens < len(ids)


def test_a_cancelled_stream_stops_its_row_and_the_others_complete(models) -> None:
    prompts = [QUESTION, "hi", "Hello there"]
    requests = [{"messages": ask(p), "settings": settings(max_new_tokens=40)} for p in prompts]
    expected = one_by_one(models, requests)
    eng = engine(models, max_batch=len(requests))
    eng.load()
    gate = ForwardGate(eng.model, at=5)
    try:
        streams = [eng.stream(**r) for r in requests]
        assert gate.reached.wait(60)
        streams[1].close()
        gate.release.set()
        texts = ["".join(s) for s in streams]
    finally:
        gate.remove()
    assert texts[0] == expected[0] and texts[2] == expected[2]
    assert texts[1] == ""  # closed: nothing more is read from it
    assert streams[1].finish_reason == "cancelled"
    assert streams[1].completion_tokens < 10  # its row stopped at once, not at 40 tokens
    assert eng.stats.batches == 1


def test_a_batch_whose_streams_all_go_away_ends(models) -> None:
    requests = [{"messages": ask(p), "settings": settings(max_new_tokens=200)} for p in "ab"]
    eng = engine(models, max_batch=len(requests))
    eng.load()
    gate = ForwardGate(eng.model, at=3)
    try:
        streams = [eng.stream(**r) for r in requests]
        assert gate.reached.wait(60)
        streams[0].close()
        del streams[1]  # dropped without close(): a client that went away
        gc.collect()
        gate.release.set()
        # The next request runs only after that batch ended.
        assert eng.generate(ask("x"), settings=settings(max_new_tokens=1)) is not None
    finally:
        gate.remove()
    assert gate.calls < 10  # forward passes of both batches, not 200
    assert eng.stats.batches == 2


def test_a_generation_error_reaches_every_consumer_of_the_batch(models) -> None:
    from core.serving.engine import ServingError

    refs = refs_of(models)
    requests = [
        {"messages": ask(QUESTION), "adapter": a, "settings": settings(), "refs": refs}
        for a in ("base", "codeword", "base")
    ]
    expected = one_by_one(models, requests)
    eng = engine(models, max_batch=len(requests))
    eng.add_adapter(refs["codeword"])
    gate = ForwardGate(eng.model, at=3, error=RuntimeError("device lost"))
    try:
        streams = [eng.stream(**r) for r in requests]
        for s in streams:
            with pytest.raises(ServingError, match="generation failed: device lost"):
                "".join(s)
    finally:
        gate.remove()
    # The mixed batch that failed left none of PEFT's adapter_names hooks behind: a batch
    # of another size (here one row) would otherwise fail or use the wrong adapters.
    assert eng.generate(**requests[1]) == expected[1]
    assert together(eng, requests) == expected


def test_reply_reports_token_counts_and_finish_reason(models, db_engine, admin) -> None:
    from core.serving.chat import ChatService

    eng = engine(models, max_batch=2)
    service = ChatService(db_engine, eng)
    reply = service.reply(admin, ask(QUESTION), settings=settings(max_new_tokens=5))
    text = reply.text()
    prepared = eng.prepare(ask(QUESTION), settings())
    assert text and reply.finish_reason in ("stop", "length")
    assert reply.prompt_tokens == prepared.input_ids.shape[1]
    assert 0 < reply.completion_tokens <= 5

    stopped = service.reply(admin, ask(QUESTION), settings=settings(max_new_tokens=200))
    stopped.close()
    assert stopped.finish_reason == "cancelled"
