"""Chat engine benchmark: adapter switching, streaming overhead, time to first token.

    .venv/bin/python bench/chat_bench.py [--layers 8 --hidden 512] [--append]

Builds a randomly initialised Llama (size set by the flags; random weights are fine for
timing) with the byte-level BPE tokenizer and chat template of the tests, plus two LoRA
adapters with non-zero random weights, all in a temp dir (nothing is downloaded). Then:

1. switch: median time of `InferenceEngine` switching between two loaded adapters (and back
   to base) versus reloading base + adapter from disk, the alternative without switching;
2. throughput: generated tokens/s of `InferenceEngine.stream` (batch scheduler, per-row
   streamer, chat template) versus a plain `model.generate` call on the same PEFT model, adapter and
   greedy settings; both produce exactly `--tokens` new tokens (EOS suppressed);
3. time to first streamed piece (the streamer releases text token by token).

--append adds a section with the machine description to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def build(tmp: Path, layers: int, hidden: int) -> tuple[Path, list[Path]]:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    from tests.integration.test_chat_engine import make_tiny_model

    tok_dir = make_tiny_model(tmp / "tok")  # for its tokenizer and chat template
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tok_dir)
    base = tmp / "base"
    tok.save_pretrained(base)
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=hidden * 11 // 4,
        num_hidden_layers=layers,
        num_attention_heads=max(1, hidden // 64),
        num_key_value_heads=max(1, hidden // 64),
        max_position_embeddings=2048,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    LlamaForCausalLM(cfg).save_pretrained(base)
    adapters = []
    for i in range(2):
        torch.manual_seed(i + 1)
        model = AutoModelForCausalLM.from_pretrained(base)
        lora = LoraConfig(
            r=16,
            lora_alpha=32,
            target_modules="all-linear",
            init_lora_weights=False,
            task_type="CAUSAL_LM",
        )
        peft_model = get_peft_model(model, lora)
        out = tmp / f"adapter{i}"
        peft_model.save_pretrained(out)
        adapters.append(out)
    return base, adapters


def median_ms(fn, n: int) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--append", action="store_true")
    args = ap.parse_args()

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from core.serving.engine import AdapterRef, GenerationSettings, InferenceEngine

    with tempfile.TemporaryDirectory(prefix="clara-chat-bench-") as d:
        tmp = Path(d)
        base, adapters = build(tmp, args.layers, args.hidden)
        eng = InferenceEngine(base, device="cpu")
        eng.load()
        params = sum(p.numel() for p in eng.model.parameters())
        refs = {
            f"a{i}": AdapterRef(f"a{i}", str(p), base_model=str(base))
            for i, p in enumerate(adapters)
        }
        for r in refs.values():
            eng.add_adapter(r)

        # 1. switching --------------------------------------------------------------------
        order = ["a0", "a1", "base"]
        state = {"i": 0}

        def switch() -> None:
            name = order[state["i"] % len(order)]
            state["i"] += 1
            with eng.lock:
                ctx = eng._select(name, refs)
                with ctx:  # entering base's disable_adapter() is part of its switch cost
                    pass

        switch_ms = median_ms(switch, 30)

        def reload() -> None:
            m = AutoModelForCausalLM.from_pretrained(base)
            PeftModel.from_pretrained(m, str(adapters[1]))

        reload_ms = median_ms(reload, 3)
        assert eng.stats.base_loads == 1

        # 2./3. streaming vs plain generate -----------------------------------------------
        settings = GenerationSettings(
            temperature=0.0, max_new_tokens=args.tokens, repetition_penalty=1.0
        )
        messages = [{"role": "user", "content": "What is the codeword? Tell me a story."}]
        prepared = eng.prepare(messages, settings)
        kw = eng._generate_kwargs(settings)
        kw.update(min_new_tokens=args.tokens)  # identical token counts in both paths
        ids = prepared.input_ids

        def plain() -> int:
            with eng.lock:
                eng._select("a0", refs)
                with torch.inference_mode():
                    out = eng.model.generate(
                        input_ids=ids, attention_mask=torch.ones_like(ids), **kw
                    )
            return int(out.shape[1] - ids.shape[1])

        orig = eng._generate_kwargs
        eng._generate_kwargs = lambda s: {**orig(s), "min_new_tokens": args.tokens}

        def streamed() -> tuple[int, float]:
            t0 = time.perf_counter()
            first = None
            stream = eng.stream(messages, adapter="a0", settings=settings, refs=refs)
            for _piece in stream:
                if first is None:
                    first = time.perf_counter() - t0
            return stream.completion_tokens, (first or 0.0) * 1000

        def in_thread(fn):
            # The engine generates in a worker thread (the caller consumes the stream), so
            # the fair baseline runs there too: on an oversubscribed CPU, OpenMP in the main
            # thread behaves differently (see the main-thread figure reported as well).
            out: list = []
            t = threading.Thread(target=lambda: out.append(fn()))
            t.start()
            t.join()
            return out[0]

        def first_token_ms() -> float:
            one = {**kw, "max_new_tokens": 1, "min_new_tokens": 1}
            t0 = time.perf_counter()
            with torch.inference_mode():
                eng.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **one)
            return (time.perf_counter() - t0) * 1000

        plain()  # warm-up
        in_thread(plain)
        streamed()
        main_tps, plain_tps, stream_tps, ttft, ttft_tok = [], [], [], [], []
        for _ in range(args.repeats):  # interleaved so that load changes hit all alike
            t0 = time.perf_counter()
            n = plain()
            main_tps.append(n / (time.perf_counter() - t0))
            t0 = time.perf_counter()
            n = in_thread(plain)
            plain_tps.append(n / (time.perf_counter() - t0))
            t0 = time.perf_counter()
            n, first_ms = streamed()
            stream_tps.append(n / (time.perf_counter() - t0))
            ttft.append(first_ms)
            ttft_tok.append(in_thread(first_token_ms))
        p_tps, s_tps = statistics.median(plain_tps), statistics.median(stream_tps)
        m_tps = statistics.median(main_tps)

    import peft
    import transformers

    lines = [
        f"- model: random Llama, {args.layers} layers, hidden {args.hidden}, "
        f"{params / 1e6:.1f} M parameters, 2 LoRA adapters r=16 on all linear layers, fp32, CPU",
        f"- adapter switch (set_adapter / disable_adapter, median of 30): **{switch_ms:.2f} ms**; "
        f"reloading base + adapter instead (median of 3): **{reload_ms:.0f} ms** "
        f"({reload_ms / max(switch_ms, 1e-6):.0f}x slower)",
        f"- generation, {args.tokens} new tokens, greedy, median of {args.repeats}: plain "
        f"`model.generate` in a worker thread **{p_tps:.1f} tok/s**; streamed through the "
        f"engine (scheduler thread, per-row streamer) **{s_tps:.1f} tok/s** = "
        f"**{100 * s_tps / p_tps:.1f}%** of plain; (plain `model.generate` called from the "
        f"main thread: {m_tps:.1f} tok/s)",
        f"- time to first token (prefill + 1 token, median): **{statistics.median(ttft_tok):.0f} "
        f"ms**; time to the first streamed piece: "
        f"**{statistics.median(ttft):.0f} ms**",
        f"- base loads during the run: {eng.stats.base_loads}",
    ]
    print("\n".join(lines))
    if args.append:
        import psutil

        cpu = platform.processor() or ""
        try:
            cpu = next(
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            )
        except (OSError, StopIteration):
            pass
        machine = (
            f"- machine: nproc {os.cpu_count()}, {cpu}, "
            f"RAM {psutil.virtual_memory().total / 2**30:.0f} GiB, shared with other jobs "
            f"(load average {os.getloadavg()[0]:.1f} at the end); Python "
            f"{platform.python_version()}, torch {torch.__version__}, transformers "
            f"{transformers.__version__}, peft {peft.__version__}"
        )
        stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        with (ROOT / "bench" / "RESULTS.md").open("a", encoding="utf-8") as fh:
            fh.write(
                f"\n## Chat engine (bench/chat_bench.py, {stamp})\n\n{machine}\n"
                + "\n".join(lines)
                + "\n"
            )


if __name__ == "__main__":
    main()
