"""The engine against the transformers reference, and its own invariants."""
from __future__ import annotations

import gc
import os
import threading
from dataclasses import replace

import pytest
import torch

from model.engine import Engine
from model.loader import load_model, read_args
from model.params import RuntimeConfig, SamplingParams
from model.protocol import CancelToken
from tiny_models import VARIANTS, save_checkpoint

TOL = 1e-4
DEVICE = os.environ.get("LATENT_TEST_DEVICE", "cpu")   # the GPU machine runs these with "cuda"


@pytest.fixture(scope="module", params=list(VARIANTS))
def pair(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    reference = save_checkpoint(request.param, folder)
    return reference, Engine.load(folder, RuntimeConfig(device=DEVICE, compile=False)), folder


def _prompt(n: int, seed: int = 1) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(5, 400, (n,), generator=g).tolist()


def test_whole_prompt_logits_match_transformers(pair):
    reference, engine, _ = pair
    ids = _prompt(48)
    with torch.no_grad():
        expected = reference(torch.tensor([ids])).logits[0]
    for path in ("absorbed", "naive"):
        engine.runtime = replace(engine.runtime, attention=path)
        got = engine.logits(ids)
        assert got.shape == expected.shape
        assert (got - expected).abs().max().item() <= TOL, path
    engine.runtime = replace(engine.runtime, attention="auto")


def test_token_by_token_decode_matches_transformers(pair):
    """Feeding a prompt one token at a time (every step reusing the rows before it) gives
    the reference's logits at every position."""
    reference, engine, _ = pair
    ids = _prompt(24, seed=2)
    with torch.no_grad():
        expected = reference(torch.tensor([ids])).logits[0]
    engine.clear_cache()
    for t in range(1, len(ids) + 1):
        got = engine.score(ids[:t])
        if t > 1:
            assert engine.last_stats.reused_tokens == t - 1
        assert (got - expected[t - 1]).abs().max().item() <= TOL, t


def test_greedy_generation_matches_transformers_generate(pair):
    reference, engine, _ = pair
    ids = _prompt(16, seed=3)
    with torch.no_grad():
        out = reference.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False,
                                 eos_token_id=None, pad_token_id=0)[0, len(ids):].tolist()
    eos = engine.tokenizer.eos_id
    if eos in out:
        out = out[: out.index(eos)]
    engine.clear_cache()
    gen = engine.generate(ids, SamplingParams(max_new_tokens=8))
    assert gen.run() == engine.tokenizer.decode(out).rstrip("\ufffd")


def _clean_boundary(engine, seed):
    """(prompt, full text, stop) where stop straddles two generated tokens, or None."""
    ids = _prompt(16, seed=seed)
    tok = engine.tokenizer
    full = engine.generate(ids, SamplingParams(max_new_tokens=12, stop_token_ids=()))
    full.run()
    generated = engine.live.tokens[len(ids):]
    for k in range(1, len(generated)):
        left, right = tok.decode(generated[:k]), tok.decode(generated[k : k + 1])
        if left and right and "\ufffd" not in left + right and left[-1] + right[0] in full.text:
            return ids, full.text, left[-1] + right[0]
    return None


def test_stop_string_split_across_tokens_ends_generation_and_is_not_returned(pair):
    _, engine, _ = pair
    found = next(filter(None, (_clean_boundary(engine, seed) for seed in range(11, 41))), None)
    assert found is not None, "no prompt gave two clean adjacent tokens"
    ids, full_text, stop = found
    gen = engine.generate(ids, SamplingParams(max_new_tokens=12, stop=[stop]))
    text = gen.run()
    assert text == full_text[: full_text.index(stop)]
    assert gen.stats.finish_reason == "stop"


def test_absorbed_equals_naive_on_prefill_over_a_cached_prefix(pair):
    _, engine, _ = pair
    ids = _prompt(40, seed=4)
    results = {}
    for path in ("absorbed", "naive"):
        engine.runtime = replace(engine.runtime, attention=path)
        engine.clear_cache()
        engine.score(ids[:25])
        results[path] = engine.score(ids)          # 15 new tokens over 25 cached
        assert engine.last_stats.reused_tokens == 25
    engine.runtime = replace(engine.runtime, attention="auto")
    assert (results["absorbed"] - results["naive"]).abs().max().item() <= TOL


def test_reuse_is_exact(pair):
    _, engine, _ = pair
    ids = _prompt(64, seed=5)
    engine.clear_cache()
    fresh = engine.logits(ids)[-1]
    engine.score(ids[:40])
    engine.score(_prompt(30, seed=6))              # another document moves the live buffer away
    reused = engine.score(ids)
    assert engine.last_stats.reused_tokens == 40   # taken back from the radix tree
    assert (reused - fresh).abs().max().item() <= 1e-5


def test_reuse_stays_exact_after_evictions(pair):
    _, engine, folder = pair
    small = Engine.load(folder, RuntimeConfig(device=DEVICE, compile=False))
    small.cache.budget_bytes = engine.latent_bytes_per_token() * 50   # finer than cache_mb
    docs = [_prompt(40, seed=s) for s in range(10, 16)]
    for d in docs:
        small.score(d)
    stats = small.stats()
    assert stats["cache_bytes"] <= stats["cache_budget_bytes"]
    assert stats["evicted_tokens"] > 0
    for d in docs:
        expected = small.logits(d)[-1]
        got = small.score(d + [7])
        assert (small.logits(d + [7])[-1] - got).abs().max().item() <= 1e-5
        assert expected.shape == got.shape


def test_cache_bytes_per_token_is_the_latent_size(pair):
    _, engine, _ = pair
    a = engine.args
    assert engine.latent_bytes_per_token() == (a.kv_lora_rank + a.qk_rope_head_dim) * a.n_layers * 4
    engine.clear_cache()
    engine.score(_prompt(33, seed=7))
    assert engine.stats()["cache_bytes"] == 33 * engine.latent_bytes_per_token()


def test_cancel_stops_within_one_decode_step(pair):
    _, engine, _ = pair
    token = CancelToken()
    forwards = []
    hook = engine.model.register_forward_hook(lambda *_: forwards.append(1))
    try:
        gen = engine.generate(_prompt(10, seed=8), SamplingParams(max_new_tokens=50, temperature=1.0, seed=0, stop_token_ids=()), cancel=token)
        next(gen)                      # the first piece of text has arrived
        at_cancel = len(forwards)
        token.cancel()
        rest = list(gen)
    finally:
        hook.remove()
    assert gen.stats.finish_reason == "cancelled"
    assert len(forwards) - at_cancel <= 1
    assert gen.stats.generated_tokens < 50 and len(rest) <= 1


def test_cancel_before_prefill_does_no_work(pair):
    _, engine, _ = pair
    token = CancelToken()
    token.cancel()
    gen = engine.generate(_prompt(10), SamplingParams(max_new_tokens=5), cancel=token)
    assert gen.run() == ""
    assert gen.stats.finish_reason == "cancelled" and gen.stats.prefilled_tokens == 0


def _nothing_pinned(engine) -> bool:
    """Every cached row can be evicted (the cache is emptied to see it)."""
    engine.cache.evict(0)
    return engine.cache.stats()["cache_tokens"] == 0


def _finishes(engine, prompt, seconds: float = 30.0) -> bool:
    """Whether another generation runs to its end on another thread within `seconds`."""
    done = threading.Event()
    thread = threading.Thread(target=lambda: (engine.generate(prompt, SamplingParams(max_new_tokens=2)).run(),
                                              done.set()), daemon=True)
    thread.start()
    thread.join(seconds)
    return done.is_set()


def test_a_consumer_that_raises_mid_stream_leaves_nothing_held(pair):
    """A generation used as a context manager is closed however its block ends: a consumer that
    fails after its first piece leaves no cache row pinned and the engine free for the next
    generation at once. (gc is off: nothing may rest on the generation being collected.)"""
    _, engine, _ = pair
    ids = _prompt(24, seed=31)
    engine.generate(ids, SamplingParams(max_new_tokens=1)).run()    # cached: the next one pins this prefix
    gc.disable()
    try:
        with pytest.raises(RuntimeError, match="consumer failed"):
            with engine.generate(ids + [7], SamplingParams(max_new_tokens=20, stop_token_ids=())) as gen:
                for _ in gen:
                    raise RuntimeError("the consumer failed")
        assert gen.stats.generated_tokens >= 1                       # it stopped mid-stream
        assert _nothing_pinned(engine)
        assert _finishes(engine, ids)
    finally:
        gc.enable()


def test_a_generation_closed_while_parked_leaves_the_holders_rows_alone(pair):
    """Two generations take turns; closing the paused (parked) one neither trims nor files the
    rows of the one holding the live buffer, which writes what it writes alone."""
    _, engine, _ = pair
    params = SamplingParams(max_new_tokens=16, stop_token_ids=())
    first, second = _prompt(20, seed=32), _prompt(18, seed=33)
    alone = engine.generate(second, params).run()
    engine.clear_cache()
    with engine.generate(first, params) as a, engine.generate(second, params) as b:
        next(a)
        pieces = [next(b)]                       # b takes the buffer: a is parked
        a.close()
        pieces += list(b)
    assert "".join(pieces) == alone
    kept = engine.live.tokens                    # b's prompt and the tokens it fed, as plain decoding leaves them
    assert kept[: len(second)] == tuple(second) and len(kept) == len(second) + b.stats.generated_tokens - 1
    assert _nothing_pinned(engine)


def test_sampling_with_a_seed_is_reproducible(pair):
    _, engine, _ = pair
    ids = _prompt(12, seed=9)
    a = engine.generate(ids, SamplingParams(max_new_tokens=12, temperature=0.8, top_p=0.9, top_k=50, seed=123, stop_token_ids=()))
    b = engine.generate(ids, SamplingParams(max_new_tokens=12, temperature=0.8, top_p=0.9, top_k=50, seed=123, stop_token_ids=()))
    assert a.run() == b.run()


def test_prompt_lookup_speculation_writes_exactly_what_greedy_decoding_writes(pair):
    """Drafts are verified in one forward and only the tokens greedy decoding would choose are
    kept: the text, the stats that count tokens, and the rows left in the live buffer match."""
    _, engine, _ = pair
    pattern = _prompt(12, seed=21)
    for length in (64, engine.context - 5):        # the second ends 5 tokens before the context does
        prompt = (pattern * (length // 12 + 1))[:length]   # a prompt that repeats itself gives drafts
        runs = {}
        for speculate in (0, 8):
            engine.runtime = replace(engine.runtime, speculate=speculate)
            engine.clear_cache()
            gen = engine.generate(prompt, SamplingParams(max_new_tokens=24, stop_token_ids=()))
            runs[speculate] = (gen.run(), gen.stats.generated_tokens, list(engine.live.tokens), gen.stats.extra)
        engine.runtime = replace(engine.runtime, speculate=RuntimeConfig().speculate)
        assert runs[8][:3] == runs[0][:3], length
        assert runs[0][1] == min(24, engine.context - length)
        assert "draft_tokens" not in runs[0][3]   # off means off (the bundled-model test sees drafts taken)


def test_a_small_models_decode_keeps_one_thread_whatever_prefill_gets():
    """Decode of a small model is per-operation overhead: a second thread made it slower."""
    from model.engine.core import _threads

    assert _threads(2, 4_000_000) == (2, 1)
    assert _threads(0, 4_000_000) == (1, 1)
    assert _threads(4, 16_000_000_000) == (4, 4)
    assert _threads(0, 16_000_000_000)[0] == _threads(0, 16_000_000_000)[1] >= 1


def _forward_twice(model, ids: list[int], absorbed: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Prefill ids[:-1], then a one-token step: (prefill logits, step logits, the rows written)."""
    cache = model.new_cache(len(ids) + 3)
    tokens = torch.tensor(ids, device=cache.device)
    first = model(tokens[:-1], cache[:, : len(ids) - 1], absorbed, all_logits=True)
    step = model(tokens[-1:], cache[:, : len(ids)], absorbed)
    return first, step, cache


def test_packed_weights_compute_what_the_checkpoints_layers_compute(pair):
    """Engine.load packs the model: the query's and kv_a's products of x stacked into one, gate
    and up into one (dense and shared MLPs), float weights stored column-major. The model as
    the loader builds it, one layer per checkpoint tensor, is the reference."""
    _, engine, folder = pair
    loaded = load_model(folder, read_args(folder), device=DEVICE)
    packed = engine.model
    attn, shared = packed.layers[1].attn, packed.layers[1].ffn.shared
    assert attn.q_kv_a_proj is not None and not hasattr(attn, "kv_a_proj_with_mqa")
    assert shared.gate_up_proj is not None and not hasattr(shared, "gate_proj")
    assert packed.layers[0].ffn.gate_up_proj is not None                       # the dense layer
    assert sum(p.numel() for p in packed.parameters()) == sum(p.numel() for p in loaded.parameters())
    ids = _prompt(30, seed=12)
    for absorbed in (False, True):
        want, got = _forward_twice(loaded, ids, absorbed), _forward_twice(packed, ids, absorbed)
        for a, b in zip(want, got):
            assert (a - b).abs().max().item() <= TOL, absorbed   # float32 noise: another summation order


@pytest.fixture(scope="module")
def compiled_pair(tmp_path_factory):
    """An engine whose one-token step is compiled (into a fresh cache folder, so the compiler
    really runs), and the same checkpoint eager."""
    folder = tmp_path_factory.mktemp("compiled")
    save_checkpoint("v2-qlora-group", folder)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg-cache")))
        compiled = Engine.load(folder, RuntimeConfig(compile=True))
        assert compiled.forward.wait(timeout=900), compiled.forward.state
    return compiled, Engine.load(folder, RuntimeConfig(compile=False))


@pytest.mark.slow
def test_compiled_step_computes_what_the_eager_step_computes(compiled_pair):
    """Token by token (each a one-token prefill over the reused rows: the compiled path) the
    logits and the rows left in the buffer are eager's, at every position."""
    compiled, eager = compiled_pair
    ids = _prompt(40, seed=31)
    compiled.clear_cache()
    eager.clear_cache()
    before = compiled.forward.compiled_calls
    for t in range(2, len(ids) + 1):
        assert (compiled.score(ids[:t]) - eager.score(ids[:t])).abs().max().item() <= TOL, t
    assert compiled.forward.compiled_calls - before == len(ids) - 2       # the first two are prefills
    n = len(ids)
    assert (compiled.live.rows[:, :n] - eager.live.rows[:, :n]).abs().max().item() <= TOL


@pytest.mark.slow
def test_compiled_decoding_writes_what_eager_decoding_writes(compiled_pair):
    """Greedy text is eager's, with speculate 0 and 8; while the step runs compiled the engine
    does not draft (an eager verification costs several compiled steps)."""
    compiled, eager = compiled_pair
    prompt = (_prompt(12, seed=22) * 6)[:64]
    for speculate in (0, 8):
        gens = []
        for engine in (compiled, eager):
            engine.runtime = replace(engine.runtime, speculate=speculate)
            engine.clear_cache()
            gens.append(engine.generate(prompt, SamplingParams(max_new_tokens=32, stop_token_ids=())))
            gens[-1].run()
        assert gens[0].text == gens[1].text, speculate
        assert "draft_tokens" not in gens[0].stats.extra
    assert compiled.stats()["decode_step"]["state"] == "compiled"


@pytest.mark.slow
def test_compile_turned_off_at_run_time_means_eager_steps(compiled_pair):
    compiled, _ = compiled_pair
    compiled.runtime = replace(compiled.runtime, compile=False)
    try:
        before = compiled.forward.compiled_calls
        compiled.generate(_prompt(20, seed=23), SamplingParams(max_new_tokens=8, stop_token_ids=())).run()
    finally:
        compiled.runtime = replace(compiled.runtime, compile=True)
    assert compiled.forward.compiled_calls == before


def test_a_failed_compile_leaves_the_engine_eager_and_says_so_once(tmp_path, monkeypatch, caplog):
    """The compiler process loads the checkpoint again; with its weights gone it fails, and the
    engine (whose weights are in memory) goes on decoding eagerly."""
    save_checkpoint("v2-greedy-yarn", tmp_path)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    engine = Engine.load(tmp_path, RuntimeConfig(compile=True), warmup=False)
    for weights in tmp_path.glob("*.safetensors"):
        weights.unlink()
    with caplog.at_level("WARNING", logger="model.engine.step"):
        engine.warmup()
        assert engine.forward.wait(timeout=300) is False
    assert engine.forward.state == "failed"
    assert [r.getMessage() for r in caplog.records if r.name == "model.engine.step"] == [caplog.records[-1].getMessage()]
    assert "runs eager" in caplog.records[-1].getMessage()
    gen = engine.generate(_prompt(10), SamplingParams(max_new_tokens=4, stop_token_ids=()))
    assert gen.run() is not None and gen.stats.generated_tokens == 4


def test_max_context_beyond_what_the_model_was_trained_on_is_said_and_capped(tmp_path, caplog):
    """The engine holds no more positions than the model was trained on (#20 item 9): asked
    for more, it says so in one log line and its context, prompts and stats use the model's."""
    import json

    save_checkpoint("v2-greedy-yarn", tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 96}))
    with caplog.at_level("WARNING", logger="model.engine.core"):
        engine = Engine.load(tmp_path, RuntimeConfig(max_context=512, compile=False))
    [said] = [r.getMessage() for r in caplog.records if "max_context" in r.getMessage()]
    assert "512" in said and "96" in said
    assert engine.stats()["max_context"] == 96 and engine.live.rows.shape[1] == 96
    with pytest.raises(ValueError, match="context holds 96"):
        engine.generate(list(range(5, 105)), SamplingParams(max_new_tokens=2))


# ---------------------------------------------------------------------------------------------
# exit: no thread may be inside PyTorch while Python finalizes (it would die of SIGABRT)

EXIT_WHILE_GENERATING = """
import sys, threading, time
from model.engine import Engine
from model.params import RuntimeConfig, SamplingParams

engine = Engine.load(sys.argv[1], RuntimeConfig(compile=False, threads=1))
going = threading.Event()

def generate():
    while True:
        for _ in engine.generate("def f(x):", SamplingParams(max_new_tokens=500, stop_token_ids=())):
            going.set()

threading.Thread(target=generate, daemon=True).start()
going.wait()
time.sleep(0.02)
"""


@pytest.mark.parametrize("run", range(2))
def test_the_process_exits_cleanly_while_another_thread_generates(tmp_path, run):
    """Before exit closed the engine, the generating thread was ended inside a decode step and
    the process died of SIGABRT ("terminate called without an active exception", status 134)."""
    import subprocess
    import sys

    save_checkpoint("v2-greedy-yarn", tmp_path)
    done = subprocess.run([sys.executable, "-c", EXIT_WHILE_GENERATING, str(tmp_path)], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "terminate called" not in done.stderr


def test_closing_the_compiled_step_ends_its_loader_thread(tmp_path, monkeypatch):
    """close() (at exit) wakes a compile waiting for its delay and returns once that thread has
    ended: the thread holds the model, and freeing it there while Python finalizes aborted
    test_rpc + test_engine runs."""
    save_checkpoint("v2-greedy-yarn", tmp_path)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))   # nothing cached: it waits to compile
    before = set(threading.enumerate())
    engine = Engine.load(tmp_path, RuntimeConfig(compile=True))
    loaders = [t for t in threading.enumerate() if t not in before and t.name == "latent-compile"]
    assert engine.forward.state == "waiting" and loaders
    engine.forward.close()
    assert not any(t.is_alive() for t in loaders)
    assert engine.forward.state == "eager"


def test_suppressed_tokens_are_never_written_nor_offered_as_alternatives(pair):
    """A FIM middle never holds its format's markers: a model that mixes up the layouts put
    <fim_hole> first after an SPM prefix, which the pipeline cut to an empty answer. The
    suppressed ids are out of reach of the greedy pick, of sampling, and of the first choices
    that alternatives branch on."""
    _, engine, _ = pair
    ids = _prompt(16, seed=4)
    plain = engine.generate(ids, SamplingParams(max_new_tokens=8, stop_token_ids=()))
    plain.run()
    first = plain.stats.extra["first_choices"][0][0]
    banned = (first, *[c[0] for c in plain.stats.extra["first_choices"][1:2]])
    for params in (SamplingParams(max_new_tokens=8, stop_token_ids=(), suppress_token_ids=banned),
                   SamplingParams(max_new_tokens=8, stop_token_ids=(), suppress_token_ids=banned,
                                  temperature=1.0, seed=3)):
        gen = engine.generate(ids, params)
        gen.run()
        tokens = list(engine.live.tokens[len(ids):])
        assert not set(tokens) & set(banned)
        assert not {c[0] for c in gen.stats.extra["first_choices"]} & set(banned)


@pytest.mark.parametrize("heal", [" ", "re", " retu", "  return a"])
def test_a_healed_answer_begins_with_what_heals_whatever_the_model_prefers(pair, heal):
    """Token healing (SamplingParams.heal): the prompt's unfinished end is taken off and the
    model writes it with what follows, in the tokens training showed it ("\\n" + 7 spaces, then
    " code"). Until the answer holds it, only tokens that spell on are in reach — of the greedy
    pick, of sampling, of the first choices alternatives branch on — and drafts wait."""
    _, engine, _ = pair
    ids = _prompt(16, seed=5)
    for params in (SamplingParams(max_new_tokens=8, stop_token_ids=(), heal=heal),
                   SamplingParams(max_new_tokens=8, stop_token_ids=(), heal=heal, temperature=1.0, seed=3)):
        gen = engine.generate(ids, params)
        text = gen.run()
        assert text.startswith(heal), (heal, text)
        for token, _ in gen.stats.extra["first_choices"]:
            piece = engine.tokenizer.decode([token])
            assert heal.startswith(piece) or piece.startswith(heal)
