"""The engine against the transformers reference, and its own invariants."""
from __future__ import annotations

import os
from dataclasses import replace

import pytest
import torch

from model.engine import Engine
from model.params import RuntimeConfig, SamplingParams
from model.protocol import CancelToken
from tiny_models import VARIANTS, save_checkpoint

TOL = 1e-4
DEVICE = os.environ.get("LATENT_TEST_DEVICE", "cpu")   # the GPU machine runs these with "cuda"


@pytest.fixture(scope="module", params=list(VARIANTS))
def pair(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    reference = save_checkpoint(request.param, folder)
    return reference, Engine.load(folder, RuntimeConfig(device=DEVICE)), folder


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
    small = Engine.load(folder, RuntimeConfig(device=DEVICE))
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
    prompt = (pattern * 6)[:64]                   # a prompt that repeats itself gives drafts
    runs = {}
    for speculate in (0, 8):
        engine.runtime = replace(engine.runtime, speculate=speculate)
        engine.clear_cache()
        gen = engine.generate(prompt, SamplingParams(max_new_tokens=24, stop_token_ids=()))
        runs[speculate] = (gen.run(), gen.stats.generated_tokens, list(engine.live.tokens), gen.stats.extra)
    engine.runtime = replace(engine.runtime, speculate=RuntimeConfig().speculate)
    assert runs[8][:3] == runs[0][:3]
    assert "draft_tokens" not in runs[0][3]       # off means off (the bundled-model test sees drafts taken)


def test_a_small_models_decode_keeps_one_thread_whatever_prefill_gets():
    """Decode of a small model is per-operation overhead: a second thread made it slower."""
    from model.engine.core import _threads

    assert _threads(2, 4_000_000) == (2, 1)
    assert _threads(0, 4_000_000) == (1, 1)
    assert _threads(4, 16_000_000_000) == (4, 4)
    assert _threads(0, 16_000_000_000)[0] == _threads(0, 16_000_000_000)[1] >= 1
