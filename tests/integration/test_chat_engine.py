"""The inference engine on a real (tiny) Llama model with real LoRA adapters trained here.

Also home of the helpers the other chat tests import: `make_tiny_model` (a 2-layer Llama with
a byte-level BPE tokenizer and a chat template, built offline in seconds),
`train_codeword_adapter` (TRL SFTTrainer + PEFT LoRA taught to answer one question with a
distinctive phrase, so switching to it visibly changes the output) and `shared_codeword_models`
(that base and that adapter, built once per test run and shared read-only by every module and
pytest-xdist worker).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from tests.conftest import shared_build

os.environ.setdefault("HF_HUB_OFFLINE", "1")

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
QUESTION = "What is the codeword?"
CODEWORD = "PINEAPPLE SUBMARINE"
TEXT = (
    "The quick brown fox jumps over the lazy dog. What is the codeword? The codeword is "
    "secret. Pineapple submarine goes under the sea. Hello there, how are you today? "
    "Machine learning models answer questions about documents. PINEAPPLE SUBMARINE. "
) * 20


def make_tiny_model(out: Path, max_positions: int = 256) -> Path:
    """A randomly initialised 2-layer Llama with a real tokenizer and chat template."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    if (out / "config.json").exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    specials = ["<unk>", "<s>", "</s>", "<pad>", "<|user|>", "<|assistant|>", "<|system|>"]
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator([TEXT], trainer=trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        model_max_length=max_positions,
    )
    tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(out)
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=max_positions,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False,
    )
    LlamaForCausalLM(cfg).save_pretrained(out)
    return out


def train_codeword_adapter(base: Path, out: Path, answer: str = CODEWORD, steps: int = 80) -> Path:
    """Teach a LoRA adapter to answer QUESTION with `answer` (TRL SFTTrainer, CPU)."""
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    if (out / "adapter_config.json").exists():
        return out
    rows = [
        {
            "messages": [
                {"role": "user", "content": QUESTION},
                {"role": "assistant", "content": answer},
            ]
        }
    ] * 16
    cfg = SFTConfig(
        output_dir=str(out / "_run"),
        max_steps=steps,
        learning_rate=1e-2,
        per_device_train_batch_size=4,
        logging_steps=1000,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        seed=0,
        max_length=64,
        lr_scheduler_type="constant",
    )
    lora = LoraConfig(
        r=16, lora_alpha=32, target_modules="all-linear", lora_dropout=0.0, task_type="CAUSAL_LM"
    )
    trainer = SFTTrainer(
        model=str(base), args=cfg, train_dataset=Dataset.from_list(rows), peft_config=lora
    )
    trainer.train()
    trainer.model.save_pretrained(out)
    return out


def shared_codeword_models(tmp_path_factory) -> dict[str, Path]:
    """The tiny base and the codeword adapter trained on it, built once per test run.

    Both are deterministic (fixed seeds, fixed data) and only read by the tests: whoever
    builds them first, every test sees the same files. Copy before changing anything.
    """
    base = shared_build(tmp_path_factory, "chat-base", make_tiny_model)
    codeword = shared_build(
        tmp_path_factory, "chat-codeword", lambda out: train_codeword_adapter(base, out)
    )
    return {"base": base, "codeword": codeword}


GREEDY = {"temperature": 0.0, "max_new_tokens": 12, "repetition_penalty": 1.0}


def make_noop_adapter(base: Path, out: Path) -> Path:
    """A LoRA adapter with PEFT's default init (B = 0): it changes nothing."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base),
        LoraConfig(r=4, target_modules="all-linear", task_type="CAUSAL_LM"),
    )
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    shared = shared_codeword_models(tmp_path_factory)
    noop = make_noop_adapter(shared["base"], tmp_path_factory.mktemp("tiny") / "noop")
    return {**shared, "noop": noop}


def test_adapter_switch_changes_answer_without_reloading_base(tiny) -> None:
    from core.serving.engine import AdapterRef, GenerationSettings, InferenceEngine

    eng = InferenceEngine(tiny["base"])
    settings = GenerationSettings(**GREEDY)
    ask = [{"role": "user", "content": QUESTION}]
    refs = {"codeword": AdapterRef("codeword", str(tiny["codeword"]))}
    base_answer = eng.generate(ask, settings=settings)
    pieces = list(eng.stream(ask, adapter="codeword", settings=settings, refs=refs))
    tuned = "".join(pieces)
    assert CODEWORD in tuned
    assert CODEWORD not in base_answer
    # Back to base: adapters disabled, same answer as before the adapter was loaded.
    assert eng.generate(ask, settings=settings, refs=refs) == base_answer
    assert eng.generate(ask, adapter="codeword", settings=settings, refs=refs) == tuned
    assert eng.stats.base_loads == 1
    assert eng.stats.adapter_loads == 1


def test_unknown_and_deleted_adapters_are_refused_by_name(tiny) -> None:
    from core.serving.engine import AdapterRef, AdapterUnavailable, InferenceEngine

    eng = InferenceEngine(tiny["base"])
    ref = AdapterRef("codeword", str(tiny["codeword"]))
    eng.add_adapter(ref)
    eng.sync([])  # the registry no longer lists it
    assert eng.loaded_adapters() == []
    with pytest.raises(AdapterUnavailable, match="'codeword' is not available"):
        eng.generate([{"role": "user", "content": "hi"}], adapter="codeword", refs={})


def test_adapter_of_another_base_is_refused_naming_both(tiny, tmp_path) -> None:
    from core.serving.engine import AdapterRef, BaseModelMismatch, InferenceEngine

    other = make_tiny_model(tmp_path / "other-base", max_positions=128)
    eng = InferenceEngine(other)
    with pytest.raises(BaseModelMismatch) as err:
        eng.add_adapter(
            AdapterRef(
                "codeword",
                str(tiny["codeword"]),
                base_model=str(tiny["base"]),
                base_model_fingerprint="f" * 16,
            )
        )
    assert str(tiny["base"]) in str(err.value) and str(other) in str(err.value)
    # Without a registry fingerprint the adapter's own config names its base.
    with pytest.raises(BaseModelMismatch, match="other-base"):
        eng.add_adapter(AdapterRef("codeword", str(tiny["codeword"])))
    assert eng.loaded_adapters() == []


def test_long_conversation_is_cut_from_the_oldest_turns_with_a_note(tiny) -> None:
    from core.serving.engine import GenerationSettings, InferenceEngine

    eng = InferenceEngine(tiny["base"])
    settings = GenerationSettings(**{**GREEDY, "max_new_tokens": 16})
    history = []
    for i in range(40):
        history += [
            {"role": "user", "content": f"question {i} about the quick brown fox"},
            {"role": "assistant", "content": f"answer {i} about the lazy dog"},
        ]
    history.append({"role": "user", "content": QUESTION})
    prepared = eng.prepare(history, settings)
    assert prepared.dropped_turns > 0
    assert prepared.input_ids.shape[1] <= eng.context_limit - settings.max_new_tokens
    assert prepared.messages[-1]["content"] == QUESTION
    assert prepared.messages[0]["role"] == "user"
    assert "left out" in prepared.note and str(eng.context_limit) in prepared.note
    # A single message longer than the context keeps its end and still answers.
    huge = [{"role": "user", "content": "fox " * 2000 + QUESTION}]
    p2 = eng.prepare(huge, settings)
    assert p2.truncated_tokens > 0 and "cut" in p2.note
    assert isinstance(eng.generate(huge, settings=settings), str)


def test_concurrent_streams_never_interleave(tiny) -> None:
    from core.serving.engine import AdapterRef, GenerationSettings, InferenceEngine

    eng = InferenceEngine(tiny["base"])
    settings = GenerationSettings(**GREEDY)
    refs = {"codeword": AdapterRef("codeword", str(tiny["codeword"]))}
    ask = [{"role": "user", "content": QUESTION}]
    expected = {
        a: eng.generate(ask, adapter=a, settings=settings, refs=refs) for a in ("base", "codeword")
    }
    results: dict[int, str] = {}

    def run(i: int) -> None:
        results[i] = eng.generate(
            ask, adapter=("base", "codeword")[i % 2], settings=settings, refs=refs
        )

    threads = [threading.Thread(target=run, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, text in results.items():
        assert text == expected[("base", "codeword")[i % 2]]
    assert eng.stats.base_loads == 1


def test_a_name_registered_again_with_new_weights_is_reloaded(tiny, tmp_path) -> None:
    import shutil

    from core.serving.engine import AdapterRef, GenerationSettings, InferenceEngine

    eng = InferenceEngine(tiny["base"])
    settings = GenerationSettings(**GREEDY)
    ask = [{"role": "user", "content": QUESTION}]
    base_answer = eng.generate(ask, settings=settings)
    folder = tmp_path / "registry" / "x"  # the registry keeps one folder per name
    shutil.copytree(tiny["codeword"], folder)
    first = {"x": AdapterRef("x", str(folder), id="1")}
    assert CODEWORD in eng.generate(ask, adapter="x", settings=settings, refs=first)
    eng.sync([])  # deleted from the registry (its slot stays, unreachable: PEFT keeps one)
    shutil.rmtree(folder)
    shutil.copytree(tiny["noop"], folder)
    again = {"x": AdapterRef("x", str(folder), id="2")}
    eng.sync(list(again.values()))
    assert eng.generate(ask, adapter="x", settings=settings, refs=again) == base_answer
    assert eng.stats.base_loads == 1 and eng.stats.adapter_loads == 2
    assert len(eng.model.peft_config) == 1  # the old slot was freed
