"""4-bit weights (model/int4.py): llama.cpp's Q4_0 blocks, and products whose integers are exact
on every kernel this CPU has."""
from __future__ import annotations

import pytest
import torch

from model import int4
from model.int4 import GROUP, PATHS, best_path, dequantize_q4, q4_heads, q4_matmul, quantize_q4


def _reference(x: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor, n: int) -> torch.Tensor:
    """What the kernel computes, in float64: activations rounded to 8-bit blocks of 32 (Q8_0),
    times the dequantized weight."""
    blocks = x.double().reshape(*x.shape[:-1], -1, GROUP)
    peak = blocks.abs().amax(-1, keepdim=True)
    inverse = torch.where(peak > 0, 127.0 / peak.float().double(), torch.zeros_like(peak))
    q = torch.clamp(torch.round(blocks * inverse.float().double()), -127, 127)
    xq = (q * (peak.float() / 127.0).double()).reshape(x.shape)
    return xq @ dequantize_q4(packed, scales, n).double().t()


def test_blocks_are_q4_0s():
    """The weight of largest magnitude in each block sets the scale (it is -8 scales), every
    weight comes back within half a step, but those of the other sign beyond 7 steps, which
    the nibble's top (15) clamps to within a step: Q4_0's rounding."""
    torch.manual_seed(0)
    w = torch.randn(48, 256)
    packed, scales = quantize_q4(w)
    assert packed.dtype == torch.uint8 and packed.shape == (6, 8, 128)
    assert scales.dtype == torch.float16 and scales.shape == (6, 8, 8)
    assert packed.numel() * 8 + scales.numel() * 16 == w.numel() * 4.5    # 4.5 bits a weight
    back = dequantize_q4(packed, scales, 48)
    row_scales = scales.float().transpose(1, 2).reshape(48, 8)            # (row, block)
    step = row_scales.abs().repeat_interleave(GROUP, dim=1)
    scale_error = (w.reshape(48, -1, GROUP).abs().amax(-1) / 8 - row_scales.abs()).abs()
    assert (scale_error <= 1e-3 * row_scales.abs()).all()                 # float16's rounding only
    nibbles = (back / row_scales.repeat_interleave(GROUP, dim=1) + 8).round()
    slack = 1e-3 * step * 8
    error = (back - w).abs()
    assert (error[nibbles < 15] <= (step * 0.5 + slack)[nibbles < 15]).all()
    assert (error <= step + slack).all()


def test_a_block_of_zeros_and_a_size_that_is_not_a_multiple_of_32():
    packed, scales = quantize_q4(torch.zeros(2, 64))
    assert torch.equal(dequantize_q4(packed, scales, 2), torch.zeros(2, 64))
    with pytest.raises(ValueError, match="multiple of 32"):
        quantize_q4(torch.zeros(2, 40))


def test_rows_that_do_not_fill_a_tile_of_8_and_an_odd_number_of_blocks():
    """The kernel multiplies 8 output rows at a time: 13 rows are stored as 16, the last three
    zero, and only 13 come out."""
    torch.manual_seed(3)
    x, w = torch.randn(2, 96), torch.randn(13, 96)
    packed, scales = quantize_q4(w)
    assert packed.shape == (2, 3, 128) and (scales[1, :, 5:] == 0).all()
    assert torch.equal(quantize_q4(dequantize_q4(packed, scales, 13))[0], packed)   # requantizing is exact
    expected = _reference(x, packed, scales, 13)
    y = q4_matmul(x, packed, scales, 13)
    assert y.shape == (2, 13) and ((y.double() - expected).norm() / expected.norm()) < 1e-5


@pytest.mark.parametrize("M", [1, 3, 17])
def test_every_kernel_this_cpu_has_computes_the_same_products(M):
    """The plain C loop everywhere, AVX2 and AVX-512 VNNI (two tiles to a 512-bit register, an
    odd one in 256 bits) where the CPU has them: each equals the float64 reference of the same
    quantized activations and weights to float32 rounding, and the vector paths agree to the
    bit (same integers, same order of sums)."""
    assert int4.kernel() is not None, "the int4 kernel did not build (is a C compiler installed?)"
    torch.manual_seed(M)
    x, w = torch.randn(M, 512), torch.randn(104, 512) * 0.05     # 13 tiles: pairs, and one alone
    packed, scales = quantize_q4(w)
    expected = _reference(x, packed, scales, 104)
    paths = [p for p in PATHS if PATHS[p] <= PATHS[best_path()]]
    results = {p: q4_matmul(x, packed, scales, 104, path=p) for p in paths}
    for path, y in results.items():
        assert y.shape == (M, 104)
        error = ((y.double() - expected).norm() / expected.norm()).item()
        assert error < 1e-5, (path, error)
    if "vnni" in results:
        assert torch.equal(results["vnni"], results["avx2"])


def test_the_product_is_close_to_float32s():
    """What 4 bits cost on a weight of typical spread: about 5-10 % of the output's norm."""
    torch.manual_seed(1)
    x, w = torch.randn(4, 2048), torch.randn(1408, 2048) * 0.02
    packed, scales = quantize_q4(w)
    exact = x @ w.t()
    error = ((q4_matmul(x, packed, scales, 1408) - exact).norm() / exact.norm()).item()
    assert 0.01 < error < 0.12, error


def test_leading_dimensions_and_threads_do_not_change_the_answer():
    torch.manual_seed(2)
    x, w = torch.randn(2, 3, 256), torch.randn(64, 256)
    packed, scales = quantize_q4(w)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = q4_matmul(x, packed, scales, 64)
        torch.set_num_threads(2)
        two = q4_matmul(x, packed, scales, 64)
    finally:
        torch.set_num_threads(threads)
    assert one.shape == (2, 3, 64) and torch.equal(one, two)
    assert torch.allclose(one.reshape(6, 64), q4_matmul(x.reshape(6, 256), packed, scales, 64))


@pytest.mark.parametrize("tokens", [1, 3])
def test_a_tokens_experts_in_one_call_equal_them_one_by_one(tokens, monkeypatch):
    """`Int4Experts.run_chosen` (the kernel's q4_moe: a decode step's token through its k
    experts in one call) against the experts run one by one, as the engine ran them before, on
    every kernel this CPU has: the same within the rounding of silu's floats, which can move an
    activation's 8-bit rounding by one step (inter_dim 96: three blocks; 10 experts, 3 chosen)."""
    from model.int4 import Int4Experts
    from model.moe import Experts

    assert int4.kernel() is not None, "the int4 kernel did not build (is a C compiler installed?)"
    torch.manual_seed(7)
    dense = Experts(10, 128, 96)
    with torch.no_grad():
        dense.w13.normal_(0, 0.08)
        dense.w2.normal_(0, 0.08)
    experts = Int4Experts.from_experts(dense)
    x = torch.randn(tokens, 128)
    idx = torch.stack([torch.randperm(10)[:3] for _ in range(tokens)])
    weights = torch.rand(tokens, 3)
    one_by_one = torch.stack([sum(w * experts.run(e, x[t:t + 1])[0] for e, w in zip(idx[t].tolist(), weights[t]))
                              for t in range(tokens)])
    paths = [p for p in PATHS if PATHS[p] <= PATHS[best_path()]]
    for path in paths:
        y = experts.run_chosen(x, idx, weights, path=path)
        assert y.shape == (tokens, 128)
        error = ((y - one_by_one).norm() / one_by_one.norm()).item()
        assert error < 1e-3, (path, error)
    # and near float32's weights (4 bits cost ~15-20 % of the norm at these sizes; a wrong
    # expert or gate would be off by about the whole norm)
    exact = dense.run_chosen(x, idx, weights)
    assert ((experts.run_chosen(x, idx, weights) - exact).norm() / exact.norm()).item() < 0.3
    # without a C compiler: the weights widened, the activations not rounded to 8 bits
    monkeypatch.setattr(int4, "kernel", lambda: None)
    widened = experts.run_chosen(x, idx, weights)
    assert widened.shape == (tokens, 128) and ((widened - one_by_one).norm() / one_by_one.norm()).item() < 0.05


@pytest.mark.parametrize("checkpoint", ["v2-greedy-yarn", "v2-qlora-group"])
def test_the_shared_experts_ride_in_the_routed_experts_call(checkpoint, tmp_path, monkeypatch):
    """With 4-bit experts the shared MLP is cut into experts of the routed ones' shape (whole
    tiles and blocks of its 4 bits) and every token lists them with gate 1: a decode step's
    whole feed-forward is one kernel call. The model computes what it did with the shared MLP
    apart — prefill (the grouped path) and decode (the kernel), within the rounding of silu's
    floats — and counts the same parameters. (With the shared MLP apart the router runs in
    PyTorch, and the routed experts alone in the kernel.)"""
    from model.loader import load_model, read_args
    from model.moe import MoE
    from tiny_models import save_checkpoint

    save_checkpoint(checkpoint, tmp_path)
    folded = load_model(tmp_path, read_args(tmp_path), quantize="int4")
    apart = load_model(tmp_path, read_args(tmp_path), quantize="int4")
    folded.pack()
    with monkeypatch.context() as m:
        m.setattr(MoE, "fold_shared", lambda self: None)
        apart.pack()
    moes = [layer.ffn for layer in folded.layers if isinstance(layer.ffn, MoE)]
    assert moes and all(moe.shared is None and moe.folded == 1 for moe in moes)
    assert all(layer.ffn.shared is not None for layer in apart.layers if isinstance(layer.ffn, MoE))
    assert folded.parameter_count() == apart.parameter_count()
    lib = int4.kernel()
    ids = torch.tensor(list(range(5, 40)))

    def run(model) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        """Prefill all but the last 3 tokens, then decode those one a step: the logits, and the
        feed-forward's kernel calls of the last step."""
        model.init_rope(64)
        cache = model.new_cache(len(ids))
        prefill = model(ids[:-3], cache[:, : len(ids) - 3], absorbed=True, all_logits=True)
        steps, calls = [], []

        class Counting:
            def __getattr__(self, name):
                return lambda *args: calls.append(name) or getattr(lib, name)(*args)
        for n in range(len(ids) - 3, len(ids)):
            calls.clear()
            monkeypatch.setattr(int4, "_loaded", [Counting()])
            steps.append(model(ids[n:n + 1], cache[:, : n + 1], absorbed=True))
            monkeypatch.setattr(int4, "_loaded", [lib])
        return prefill, torch.cat(steps), [c for c in calls if c in ("q4_moe", "q4_moe_routed", "q4_matmul")]

    (folded_prefill, folded_steps, folded_calls), (apart_prefill, apart_steps, apart_calls) = run(folded), run(apart)
    for ours, theirs in ((folded_prefill, apart_prefill), (folded_steps, apart_steps)):
        assert ((ours - theirs).norm() / theirs.norm()).item() < 1e-3
    args = moes[0].gate.args                    # a softmax router choosing greedily rides in it too
    one_call = "q4_moe_routed" if (args.scoring_func, args.topk_method) == ("softmax", "greedy") else "q4_moe"
    assert folded_calls.count(one_call) == len(moes)
    assert apart_calls.count("q4_moe") == len(moes)
    assert len(apart_calls) - len(folded_calls) == 2 * len(moes)   # the shared MLP's two products


def test_each_heads_rows_in_one_call_equal_a_product_per_head(monkeypatch):
    """`q4_heads` (absorbed attention's W_UK and W_UV: head h's rows of a stacked weight, with
    its own activations) computes, on every kernel this CPU has, what `q4_matmul` computes on
    each head's rows alone; without a C compiler the widened weights give the same within the
    activations' 8-bit rounding. Four heads of 80 rows, the second 48 of each (bundled model's
    v rows), three tokens."""
    assert int4.kernel() is not None, "the int4 kernel did not build (is a C compiler installed?)"
    torch.manual_seed(5)
    heads, per, first, rows = 4, 80, 32, 48
    packed, scales = quantize_q4(torch.randn(heads * per, 64))
    x = torch.randn(heads, 3, 64)
    weight = dequantize_q4(packed, scales, heads * per).view(heads, per, 64)[:, first:first + rows]
    for path in [p for p in PATHS if PATHS[p] <= PATHS[best_path()]]:
        y = q4_heads(x, packed, scales, first // 8, per // 8, rows, path)
        assert y.shape == (heads, 3, rows)
        for h in range(heads):
            alone = q4_matmul(x[h], *quantize_q4(weight[h]), rows, path)
            assert torch.equal(y[h], alone), (path, h)
    monkeypatch.setattr(int4, "kernel", lambda: None)
    widened = q4_heads(x, packed, scales, first // 8, per // 8, rows)
    exact = torch.bmm(x, weight.transpose(1, 2))
    assert torch.allclose(widened, exact, atol=1e-5)
    assert ((y - exact).norm() / exact.norm()).item() < 0.02


# ---------------------------------------------------------------------------------------------
# quantize = "int4" in an engine

def test_int4_quantizes_what_it_can_and_keeps_int8_where_blocks_do_not_fit(tmp_path):
    """Every linear layer and expert whose inputs come in whole blocks of 32 goes to 4 bits; the
    others, and the output head, to int8, as llama.cpp keeps such tensors wider. The parameter count is the model's,
    the weights take less memory than int8's, and the logits are those of float32 arithmetic on
    the 4-bit weights but for the activations' 8-bit rounding (measured 6.6 %). Against float32
    weights this tiny random model moves 60 %; the bundled model's figure is below."""
    from model.engine import Engine
    from model.int4 import Int4Experts, Int4Linear
    from model.params import RuntimeConfig
    from model.quant import Int8Linear
    from tiny_models import save_checkpoint

    save_checkpoint("v2-greedy-yarn", tmp_path)
    fp32 = Engine.load(tmp_path, RuntimeConfig(compile=False), warmup=False)
    int8 = Engine.load(tmp_path, RuntimeConfig(quantize="int8", compile=False), warmup=False)
    q4 = Engine.load(tmp_path, RuntimeConfig(quantize="int4", compile=False), warmup=False)
    modules = list(q4.model.modules())
    assert not any(isinstance(m, torch.nn.Linear) for m in modules)
    assert any(isinstance(m, Int4Experts) for m in modules) and any(isinstance(m, Int4Linear) for m in modules)
    kv_b = q4.model.layers[0].attn.kv_b_proj
    assert isinstance(kv_b, Int8Linear) == (q4.args.kv_lora_rank % GROUP != 0)
    assert isinstance(q4.model.head, Int8Linear)
    assert q4.stats()["parameters"] == fp32.stats()["parameters"]
    assert q4.stats()["weight_bytes"] < int8.stats()["weight_bytes"]
    with torch.no_grad():                      # float32 arithmetic on the 4-bit weights
        for module in fp32.model.modules():
            for name in ("weight", "w13", "w2"):
                w = getattr(module, name, None)
                if isinstance(w, torch.Tensor) and w.is_floating_point() and w.dim() >= 2 and \
                        w.shape[-1] % GROUP == 0 and not isinstance(module, torch.nn.Embedding) and \
                        module is not fp32.model.head:     # the head stays int8
                    w.copy_(dequantize_q4(*quantize_q4(w), w.shape[-2]))
        for module in fp32.model.modules():
            if hasattr(module, "refresh_weights"):
                module.refresh_weights()
    ids = list(range(5, 69))
    a, b = fp32.logits(ids), q4.logits(ids)
    assert ((a - b).norm() / a.norm()).item() < 0.1     # int8's bound on this model (activations alike)


def test_int4_on_real_code_next_to_int8():
    """What a user of quantize = "int4" gets with the bundled model (a small model, where 4 bits
    cost more than in a 16B one; its head in int8): on real code the 4M model bundled until
    2026-12-07 measured its logits 10.5 % from float32's (int8: 2 %) and its greedy picks as
    float32's at 81 % of positions (int8: 96 %); the bounds hold for the 15M model since."""
    from pathlib import Path

    from model.engine import Engine
    from model.params import RuntimeConfig
    from model.quant import Int8Linear

    text = (Path(__file__).resolve().parents[1] / "lsp_server" / "worker.py").read_text()[:3000]
    fp32 = Engine.load(None, RuntimeConfig(compile=False))
    q4 = Engine.load(None, RuntimeConfig(quantize="int4", compile=False))
    ids = fp32.tokenizer.encode(text)[:700]
    a, b = fp32.logits(ids), q4.logits(ids)
    assert isinstance(q4.model.head, Int8Linear)
    assert (a.argmax(-1) == b.argmax(-1)).float().mean().item() >= 0.77
    assert ((a - b).norm() / a.norm()).item() < 0.13


def test_int4_attention_absorbs_its_weights_on_the_kernel_as_close_to_float32_as_the_naive_path():
    """Decode's attention (absorbed: W_UK folded into the query, W_UV into the output) on an
    int4 model runs each layer's heads through the kernel: W_UK transposed, quantized from the
    float weights as they load (as llama.cpp keeps DeepSeek's k_b), W_UV read in place from
    kv_b_proj's 4 bits — no float32 copy of kv_b_proj is made (on Lite 216 MB, read every
    token). On real code with the bundled model its logits are as close to float32's as the
    naive path's (measured 7.2 % and 88.6 % same greedy pick, naive 7.3 % and 89.1 %); the two
    paths differ by the two roundings of W_UK (2.3 %, 96 % same pick)."""
    from pathlib import Path

    from model.engine import Engine
    from model.params import RuntimeConfig

    text = (Path(__file__).resolve().parents[1] / "lsp_server" / "worker.py").read_text()[:3000]
    fp32 = Engine.load(None, RuntimeConfig(compile=False), warmup=False)
    q4 = Engine.load(None, RuntimeConfig(quantize="int4", compile=False), warmup=False)
    ids = torch.tensor(fp32.tokenizer.encode(text)[:700])

    def logits(model, absorbed: bool) -> torch.Tensor:
        return model(ids, model.new_cache(len(ids)), absorbed=absorbed, all_logits=True)

    exact, naive, absorbed = logits(fp32.model, False), logits(q4.model, False), logits(q4.model, True)
    for fp32_layer, layer in zip(fp32.model.layers, q4.model.layers, strict=True):
        attn = layer.attn
        assert attn._uk_t_q4 is not None and attn._kv_b_float is None
        loaded = attn.int4_query_weight(fp32_layer.attn.kv_b_proj.weight.detach())
        assert loaded is not None and all(torch.equal(a, b) for a, b in zip(attn._uk_t_q4, loaded, strict=True))

    def error(b: torch.Tensor) -> float:
        return ((exact - b).norm() / exact.norm()).item()

    def agreement(b: torch.Tensor) -> float:
        return (exact.argmax(-1) == b.argmax(-1)).float().mean().item()

    assert error(absorbed) < 1.1 * error(naive) and error(absorbed) < 0.13
    assert agreement(absorbed) >= agreement(naive) - 0.02
    assert ((absorbed - naive).norm() / naive.norm()).item() < 0.05


def test_int4_is_refused_on_a_gpu_with_one_sentence():
    from model.options import OptionError
    from model.params import RuntimeConfig

    with pytest.raises(OptionError, match="int4 runs on the CPU only"):
        RuntimeConfig(quantize="int4", device="cuda")


@pytest.mark.parametrize("interleaved, threads", [(True, 2), (False, 1)])
def test_a_decode_steps_layer_is_two_kernel_calls_with_the_pytorch_operations_logits(monkeypatch, request,
                                                                                   interleaved, threads):
    """On an int4 model a decode token's layer is two kernel calls: its attention (the cache
    row, W_UK, the scores, softmax, the weighted latents, W_UV: `q4_mla_decode`) and its
    feed-forward with the router (`run_routed`: the scores, the k best, the routed and shared
    experts). On every path this CPU has they give the cache rows and logits of the PyTorch
    operations they replace, to float32's rounding (the int4 products are the same integers;
    float sums run in another order), with either rope layout, a thread's heads in blocks of 4
    (1 thread) or one by one (2 threads, the bundled model's 4 heads), over several tokens of
    context and over a single one."""
    from model.engine import Engine
    from model.int4 import Int4Experts
    from model.params import RuntimeConfig

    request.addfinalizer(lambda previous=torch.get_num_threads(): torch.set_num_threads(previous))
    torch.set_num_threads(threads)
    q4 = Engine.load(None, RuntimeConfig(quantize="int4", compile=False), warmup=False).model
    for layer in q4.layers:
        layer.attn.interleaved = interleaved
    ids = torch.arange(300, 340)                                        # 40 tokens
    calls = []
    attention, feed_forward = int4.q4_mla_decode, Int4Experts.run_routed

    def decode(context: int) -> tuple[torch.Tensor, torch.Tensor]:
        cache = q4.new_cache(context + 2)
        if context:
            q4(ids[:context], cache[:, :context], absorbed=True)
        first = q4(ids[context:context + 1], cache[:, :context + 1], absorbed=True)
        second = q4(ids[context + 1:context + 2], cache[:, :context + 2], absorbed=True)
        return torch.cat([first, second]), cache

    def on(path):
        def attend(*args, **kwargs):
            calls.append("attention")
            return attention(*args, **kwargs, path=path)

        def route(*args, **kwargs):
            calls.append("feed-forward")
            return feed_forward(*args, **kwargs, path=path)
        monkeypatch.setattr(int4, "q4_mla_decode", attend)
        monkeypatch.setattr(Int4Experts, "run_routed", route)

    monkeypatch.setattr(int4, "q4_mla_decode", lambda *args, **kwargs: None)
    monkeypatch.setattr(Int4Experts, "run_routed", lambda *args, **kwargs: None)
    reference = {n: decode(n) for n in (0, 37)}
    moe_layers = sum(layer.ffn.__class__.__name__ == "MoE" for layer in q4.layers)
    for path in [p for p in PATHS if PATHS[p] <= PATHS[best_path()]]:
        on(path)
        for n, (logits, cache) in reference.items():
            calls.clear()
            got, got_cache = decode(n)
            assert calls.count("attention") == 2 * len(q4.layers)        # one call a layer and token
            assert calls.count("feed-forward") == 2 * moe_layers > 0
            assert torch.allclose(got_cache, cache, rtol=1e-5, atol=1e-5)
            assert ((got - logits).norm() / logits.norm()).item() < 1e-4
            assert torch.equal(got.argmax(-1), logits.argmax(-1))


def test_the_kernel_chosen_by_measurement_computes_what_every_path_computes():
    """Which vector path runs one-row products by default, and whether it prefetches, is chosen
    by timing them when the kernel loads (AVX-512 VNNI reads slower than AVX2 on some CPUs). The
    choice only changes the speed: every choice gives the same floats as each vector path forced,
    for one row (decode) and several (prefill)."""
    lib = int4.kernel()
    if lib is None or best_path() == "plain":
        pytest.skip("no vector path on this CPU: nothing to choose")
    assert int4.TUNING["path"] in PATHS and set(int4.TUNING["gbps"]) >= {"avx2", "avx2 no prefetch"}
    torch.manual_seed(5)
    w = torch.randn(40, 256)
    packed, scales = quantize_q4(w)
    chosen = (PATHS[int4.TUNING["path"]], int(int4.TUNING["prefetch"]))
    for x in (torch.randn(1, 256), torch.randn(3, 256)):
        forced = [q4_matmul(x, packed, scales, 40, path) for path in PATHS if 0 < PATHS[path] <= PATHS[best_path()]]
        assert all(torch.equal(forced[0], y) for y in forced)
        try:
            for path in range(1, PATHS[best_path()] + 1):
                for prefetch in (0, 1):
                    lib.q4_tune(path, prefetch)
                    assert torch.equal(q4_matmul(x, packed, scales, 40), forced[0])
        finally:
            lib.q4_tune(*chosen)
