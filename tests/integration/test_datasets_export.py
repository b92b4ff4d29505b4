"""Export round trips through datasets.load_dataset and our importers, and one TRL
SFTTrainer step on an export (tiny Llama built in the test; nothing downloaded)."""

from __future__ import annotations

import json

import pytest
import yaml

from core.artifacts import STAGING_PREFIX, read_manifest, verify_manifest
from core.datasets.errors import ExportError
from core.datasets.export import export_version
from core.datasets.importers import parse_file
from core.datasets.service import SampleIn, add_samples, create_dataset
from core.datasets.versions import freeze, read_version

CHATS = [
    SampleIn(
        kind="chat",
        status="accepted",
        system="Antworte auf Deutsch.",
        messages=[
            {"role": "user", "content": f"Was regelt Satzung {i}?"},
            {
                "role": "assistant",
                "content": f"Satzung {i} regelt Gebühren, Fristen und Zuständigkeiten.",
            },
        ],
    )
    for i in range(8)
] + [
    SampleIn(
        kind="chat",
        status="accepted",
        messages=[
            {"role": "user", "content": "Hallo"},
            {"role": "assistant", "content": "Guten Tag, wie kann ich helfen?"},
            {"role": "user", "content": "Wann ist das Bürgeramt offen, bitte?"},
            {
                "role": "assistant",
                "content": 'Montag bis Freitag, 8 bis 12 Uhr; mit "Termin", auch nachmittags.',
            },
        ],
    ),
]


@pytest.fixture
def version(db_engine, admin):
    ds = create_dataset(db_engine, admin, "exp")
    add_samples(db_engine, admin, ds.id, CHATS)
    return freeze(db_engine, admin, ds.id, eval_ratio=0.2, seed=1)


def _messages(recs):
    return {json.dumps(r["messages"], ensure_ascii=False) for r in recs}


@pytest.mark.parametrize("fmt", ["messages", "sharegpt", "alpaca"])
@pytest.mark.parametrize("file_type", ["jsonl", "parquet", "csv"])
def test_round_trip_through_importer(db_engine, admin, version, fmt, file_type):
    exp = export_version(db_engine, admin, version.ref, fmt, file_type)
    assert set(exp.files) == {f"train.{file_type}", f"eval.{file_type}"}
    original = _messages(read_version(version).to_pylist())
    back = set()
    for name in exp.files:
        got_fmt, _, stream = parse_file(exp.path / name)
        assert got_fmt == fmt
        for _line, s in stream:
            msgs = ([{"role": "system", "content": s.system}] if s.system else []) + [
                m.model_dump() for m in s.messages
            ]
            back.add(json.dumps(msgs, ensure_ascii=False))
    assert back == original
    info = json.loads(exp.dataset_info_path.read_text())
    assert set(info) == {"exp_v1_train", "exp_v1_eval"}
    assert info["exp_v1_train"]["file_name"] == f"train.{file_type}"
    ax = yaml.safe_load(exp.axolotl_path.read_text())
    assert ax["datasets"][0]["path"] == str(exp.path / f"train.{file_type}")


@pytest.mark.parametrize("file_type", ["jsonl", "parquet"])
def test_load_dataset(db_engine, admin, version, file_type):
    import datasets

    exp = export_version(db_engine, admin, version.ref, "messages", file_type)
    loader = "json" if file_type == "jsonl" else "parquet"
    ds = datasets.load_dataset(
        loader, data_files={s: str(exp.path / f"{s}.{file_type}") for s in ("train", "eval")}
    )
    assert ds["train"].num_rows + ds["eval"].num_rows == 9
    assert ds["eval"].num_rows == version.counts["eval"]
    assert _messages(list(ds["train"]) + list(ds["eval"])) == _messages(
        read_version(version).to_pylist()
    )


def test_text_samples_refused_for_chat_formats(db_engine, admin):
    ds = create_dataset(db_engine, admin, "mixed")
    add_samples(
        db_engine,
        admin,
        ds.id,
        [SampleIn(kind="text", text="Ein Text.", status="accepted")] + CHATS[:2],
    )
    v = freeze(db_engine, admin, ds.id, eval_ratio=0)
    with pytest.raises(ExportError, match="1 plain-text sample"):
        export_version(db_engine, admin, v.ref, "alpaca")
    exp = export_version(db_engine, admin, v.ref, "text", "csv")
    assert (
        exp.files == {"train.csv": exp.files["train.csv"]} and exp.files["train.csv"]["rows"] == 3
    )


def test_export_is_a_staged_folder_with_a_manifest(db_engine, admin, version):
    first = export_version(db_engine, admin, version.ref, "messages", "jsonl")
    assert verify_manifest(first.path) == []
    manifest = read_manifest(first.path)
    assert manifest["kind"] == "dataset-export" and manifest["version"] == version.ref
    assert manifest["version_manifest_sha256"] == version.manifest_sha256
    assert manifest["rows"] == {n: f["rows"] for n, f in first.files.items()}
    assert {n: f["sha256"] for n, f in first.files.items()} == {
        n: manifest["files"][n]["sha256"] for n in first.files
    }
    assert {"dataset_info.json", "axolotl.yaml"} <= set(manifest["files"])
    # Exporting again replaces the folder in place and leaves no staging folder behind.
    again = export_version(db_engine, admin, version.ref, "messages", "jsonl")
    assert again.path == first.path and verify_manifest(again.path) == []
    assert not list(first.path.parent.glob(f"{STAGING_PREFIX}*"))


def _tiny_model(tmp_path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = [m.content for s in CHATS for m in s.messages] + ["Antworte auf Deutsch."]
    tok.train_from_iterator(
        corpus,
        trainers.BpeTrainer(
            vocab_size=400,
            special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    template = (
        "{% for m in messages %}<s>{{ m['role'] }}\n{{ m['content'] }}</s>\n"
        "{% endfor %}{% if add_generation_prompt %}<s>assistant\n{% endif %}"
    )
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        chat_template=template,
    )
    cfg = LlamaConfig(
        vocab_size=len(hf_tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=256,
        pad_token_id=hf_tok.pad_token_id,
        bos_token_id=hf_tok.bos_token_id,
        eos_token_id=hf_tok.eos_token_id,
    )
    return LlamaForCausalLM(cfg), hf_tok


@pytest.mark.slow
@pytest.mark.parametrize("fmt,file_type", [("messages", "jsonl"), ("text", "parquet")])
def test_sft_trainer_trains_one_step(db_engine, admin, version, tmp_path, fmt, file_type):
    import datasets
    from trl import SFTConfig, SFTTrainer

    exp = export_version(db_engine, admin, version.ref, fmt, file_type)
    loader = "json" if file_type == "jsonl" else "parquet"
    train = datasets.load_dataset(loader, data_files=str(exp.file("train")), split="train")
    model, tok = _tiny_model(tmp_path)
    trainer = SFTTrainer(
        model=model,
        processing_class=tok,
        train_dataset=train,
        args=SFTConfig(
            output_dir=str(tmp_path / "out"),
            use_cpu=True,
            max_steps=1,
            per_device_train_batch_size=2,
            report_to=[],
            save_strategy="no",
            logging_steps=1,
            max_length=128,
        ),
    )
    result = trainer.train()
    assert result.global_step == 1
    assert trainer.state.log_history[0]["loss"] > 0
