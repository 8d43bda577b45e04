"""The bundled default model (`model/bundled/`): present, small, loadable, and consistent.

Nothing here skips: a clone without the bundled model fails these tests, because a fresh
install must complete code with no download.
"""
from __future__ import annotations

import json
import math
import sysconfig
from pathlib import Path

import pytest
import torch

from model.engine import Engine
from model.fim import BOS, DEEPSEEK, EOS
from model.params import SamplingParams
from model.tokenizer import Tokenizer
from model.train import is_heldout

BUNDLED = Path(__file__).resolve().parent.parent / "model" / "bundled"
STDLIB = Path(sysconfig.get_paths()["stdlib"])
FIM = (DEEPSEEK.prefix, DEEPSEEK.suffix, DEEPSEEK.middle)
SPECIALS = (BOS, EOS, *FIM)
TRICKY = "def f(x):\r\n\treturn x + 'é' + \"日本語\"  # emoji 🐍 \\x00\n\n\n    \t\n"
PROMPTS = (
    f"{FIM[0]}import os\n\ndef list_py(folder):\n    names = []\n    for name in os.listdir(folder):\n"
    f"        {FIM[1]}\n    return names\n{FIM[2]}",
    f"{FIM[0]}class Stack:\n    def __init__(self):\n        self.items = []\n\n    def push(self, item):\n"
    f"        {FIM[1]}\n\n    def pop(self):\n        return self.items.pop()\n{FIM[2]}",
)


@pytest.fixture(scope="module")
def folder() -> Path:
    assert (BUNDLED / "config.json").is_file(), (
        f"{BUNDLED} holds no model: train one with `latent train` and copy its model/ folder there")
    return BUNDLED


@pytest.fixture(scope="module")
def config(folder) -> dict:
    return json.loads((folder / "config.json").read_text())


@pytest.fixture(scope="module")
def engine(folder) -> Engine:
    return Engine.load(str(folder))


@pytest.fixture(scope="module")
def reference(folder):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(folder)


def source_files(step: int = 6) -> list[str]:
    """Every `step`-th UTF-8 .py file of the standard library, and the tricky text."""
    texts = [TRICKY]
    for path in sorted(STDLIB.rglob("*.py"))[::step]:
        if "site-packages" not in path.parts:
            try:
                texts.append(path.read_bytes().decode("utf-8"))
            except UnicodeDecodeError:
                pass
    return texts


def test_the_folder_is_a_small_deepseek_v2_checkpoint(folder, config):
    from safetensors import safe_open

    files = sorted(p.name for p in folder.iterdir())
    assert {"config.json", "tokenizer.json", "tokenizer_config.json", "README.md"} <= set(files)
    weights = sorted(folder.glob("*.safetensors"))
    assert weights and len(files) <= 10 and all((folder / f).stat().st_size <= 16 << 20 for f in files)
    assert sum(w.stat().st_size for w in weights) <= 64 << 20          # the repository does not swell
    assert config["model_type"] == "deepseek_v2"
    assert config["q_lora_rank"] and config["kv_lora_rank"] < config["hidden_size"]
    assert config["n_shared_experts"] >= 1 and config["n_routed_experts"] > config["num_experts_per_tok"]
    names, params = [], 0
    for path in weights:
        with safe_open(str(path), "pt") as f:
            names += list(f.keys())
            params += sum(math.prod(f.get_slice(n).get_shape()) for n in f.keys())
    assert params <= 40_000_000
    assert "model.layers.1.mlp.experts.0.gate_proj.weight" in names
    assert "model.layers.1.mlp.shared_experts.down_proj.weight" in names


def test_tokenizer_round_trips_source_text_byte_for_byte(folder, reference):
    ours, theirs = Tokenizer.from_dir(folder), reference[1]
    texts = source_files()
    assert len(texts) > 250
    for text in texts:
        assert ours.decode(ours.encode(text)) == text
    for text in texts[:40]:
        ids = theirs(text).input_ids
        assert ids[0] == ours.bos_id and theirs.decode(ids[1:]) == text


def test_special_tokens_are_single_tokens_with_the_configs_ids(folder, config, engine):
    tok = engine.tokenizer
    ids = [tok.encode(s) for s in SPECIALS]
    assert all(len(x) == 1 for x in ids)
    assert ids[0][0] == tok.bos_id == config["bos_token_id"]
    assert ids[1][0] == tok.eos_id == config["eos_token_id"]
    assert engine.fim_format == "deepseek"
    fim = tok.fim
    assert [tok.encode(t) for t in (fim.prefix, fim.suffix, fim.middle)] == ids[2:]
    assert tok.add_bos
    assert set(tok.special_tokens) == set(SPECIALS)   # what the prompt builder keeps out of user text


def test_our_logits_match_transformers(engine, reference):
    model, _ = reference
    text = next(t for t in source_files() if len(t) > 4000)
    ids = engine.tokenizer.encode(f"{FIM[0]}{text[:1500]}{FIM[1]}{text[1700:2500]}{FIM[2]}", add_bos=True)
    ours = engine.logits(ids)
    with torch.no_grad():
        theirs = model(torch.tensor([ids])).logits[0]
    assert ours.shape == theirs.shape == (len(ids), engine.args.vocab_size)
    assert (ours - theirs).abs().max().item() < 1e-4


def test_greedy_generation_is_deterministic(folder, engine, reference):
    model, hf_tok = reference
    fresh = Engine.load(str(folder))
    for prompt in PROMPTS:
        first = engine.generate(prompt, SamplingParams(max_new_tokens=24)).run()
        again = engine.generate(prompt, SamplingParams(max_new_tokens=24)).run()           # from the latent cache
        other = fresh.generate(prompt, SamplingParams(max_new_tokens=24)).run()
        assert first == again == other
        ids = hf_tok(prompt, return_tensors="pt").input_ids
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=24, do_sample=False, pad_token_id=hf_tok.eos_token_id)
        assert hf_tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True) == first


def test_the_model_has_learned_python(engine):
    """Held-out standard-library code (asyncio/runners.py) costs far less than a uniform guess
    (ln 8192 ≈ 9 nats a token): the shipped model 2.26, one trained 30 CPU minutes 4.45."""
    held = sorted(p for p in STDLIB.rglob("*.py")
                  if "site-packages" not in p.parts and is_heldout(p.relative_to(STDLIB).as_posix()))
    text = next(p.read_text() for p in held if p.stat().st_size > 6000)[:6000]
    ids = engine.tokenizer.encode(text, add_bos=True)[:1024]
    logits = engine.logits(ids)
    nll = torch.nn.functional.cross_entropy(logits[:-1], torch.tensor(ids[1:]))
    assert nll.item() < 3.5


@pytest.mark.parametrize("room", [None, 16, 24])
def test_speculation_takes_drafts_on_real_code_and_changes_nothing(engine, room):
    """Code repeats itself, so prompt-lookup drafts are often right; the text stays greedy's,
    also where the prompt ends `room` tokens before the context does: drafts grown long on a
    repeated method ran past the buffer's end there (4101 rows for a buffer of 4096)."""
    from dataclasses import replace

    if room is None:
        text = next(t for t in source_files() if len(t) > 6000)
        ids = engine.tokenizer.encode(text, add_bos=True)[:900]
    else:
        text = "class Reader:\n" + "    def close(self):\n        self.file.close()\n        self.closed = True\n\n" * 400
        ids = engine.tokenizer.encode(text, add_bos=True)[:engine.context - room]
    runs = {}
    for speculate in (0, 8):
        engine.runtime = replace(engine.runtime, speculate=speculate, compile=False)   # drafts: eager steps
        gen = engine.generate(ids, SamplingParams(max_new_tokens=48, stop_token_ids=()))
        runs[speculate] = (gen.run(), list(engine.live.tokens), gen.stats.extra)
    assert runs[8][:2] == runs[0][:2]
    assert len(runs[0][1]) <= engine.context
    if room is None:
        assert runs[8][2]["accepted_draft_tokens"] > 0
