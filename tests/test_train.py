"""`latent train`: the corpus command (licenses, filters, held-out packages), tokenizer, FIM
samples in both layouts, packing, export, and one end-to-end run.

The corpus tests build small fake wheels and sdists in a temporary folder and never touch
the network. The end-to-end run trains the `tiny` preset on a handful of standard-library
files for a few seconds and loads the result with transformers and with Latent's engine, as
a user's `latent train` would.
"""
from __future__ import annotations

import gzip
import io
import json
import shutil
import sysconfig
import tarfile
import zipfile
from concurrent.futures import ProcessPoolExecutor
from email.message import Message
from pathlib import Path

import numpy as np
import pytest
import torch

from model.fim import DEEPSEEK
from model.train import main
from model.train.collect import collect
from model.train.corpus import (BOS_ID, EOS_ID, FIM_BEGIN_ID, FIM_END_ID, FIM_HOLE_ID, SPECIAL_TOKENS, Corpus,
                                is_heldout, load_corpus, prepare_corpus)
from model.train.export import export_state_dict, write_model_folder
from model.train.filters import NearDuplicates, Overlap, file_problem
from model.train.licenses import classify
from model.train.optim import decay_factor, make_optimizers, warmup_factor
from model.train.presets import PRESETS, build_model, hf_config
from model.train.samples import (EpochFeeder, choose_hole, epoch_rows, fim_ids, make_samples, marked_samples,
                                 pack_rows)
from model.train.sources import HELDOUT, read_manifest, vendored_heldout

STDLIB = Path(sysconfig.get_paths()["stdlib"])
TINY_FILES = ("textwrap.py", "colorsys.py", "bisect.py", "keyword.py", "heapq.py",
              "fnmatch.py", "shlex.py", "glob.py", "this.py", "numbers.py")
TRICKY = "def f(x):\r\n\treturn x + 'é' + \"日本語\"  # emoji 🐍\n\n\n    \t\n"


@pytest.fixture(scope="module")
def tiny_corpus(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("corpus")
    for name in TINY_FILES:
        shutil.copyfile(STDLIB / name, folder / name)
    (folder / "tricky.py").write_bytes(TRICKY.encode())
    return folder


@pytest.fixture(scope="module")
def prepared(tiny_corpus, tmp_path_factory) -> Corpus:
    out = tmp_path_factory.mktemp("prepared") / "corpus"
    return prepare_corpus(tiny_corpus, out, vocab_size=600, log=lambda *_: None)


def test_split_is_stable_and_small():
    paths = [f"pkg{i}/mod{j}.py" for i in range(40) for j in range(50)]
    held = [p for p in paths if is_heldout(p)]
    assert held == [p for p in paths if is_heldout(p)]                # same answer every time
    assert 0.01 < len(held) / len(paths) < 0.03


def test_tokenizer_round_trips_and_keeps_specials_whole(prepared):
    tok = prepared.tokenizer
    assert tok.get_vocab_size() == 600
    assert [tok.token_to_id(s) for s in SPECIAL_TOKENS] == list(range(5))
    ids = tok.encode(TRICKY, add_special_tokens=False).ids
    assert tok.decode(ids, skip_special_tokens=False) == TRICKY
    prompt = f"{SPECIAL_TOKENS[2]}a = 1{SPECIAL_TOKENS[3]}\nb = 2{SPECIAL_TOKENS[4]}"
    ids = tok.encode(prompt, add_special_tokens=False).ids
    assert [i for i in ids if i < 5] == [FIM_BEGIN_ID, FIM_HOLE_ID, FIM_END_ID]
    assert tok.encode("x", add_special_tokens=True).ids[0] == BOS_ID


def test_corpus_cache_rebuilds_the_exact_file_bytes(prepared, tiny_corpus):
    again = load_corpus(prepared.root)
    by_path = dict(zip(again.paths, again.texts))
    assert by_path["tricky.py"] == TRICKY.encode()
    assert by_path["bisect.py"] == (tiny_corpus / "bisect.py").read_bytes()
    assert again.meta["train"]["files"] + again.meta["heldout"]["files"] == len(TINY_FILES) + 1
    assert again.meta["heldout"]["files"] >= 1


def test_holes_include_the_places_an_editor_asks_from():
    text = (STDLIB / "bisect.py").read_text()
    rng = np.random.default_rng(0)
    holes = [choose_hole(text, rng) for _ in range(400)]
    assert all(0 <= a <= b <= len(text) for a, b in holes)
    at_line_end = sum(text[b:b + 1] == "\n" and text[a - 1:a] not in ("\n", "") for a, b in holes)
    inside_line = sum("\n" not in text[a:b] and text[b:b + 1] not in ("\n", "") for a, b in holes)
    whole_lines = sum(text[a - 1:a] == "\n" and text[a:b].endswith("\n") for a, b in holes)
    after_colon_indent = sum(text[:a].rstrip(" ").endswith(":\n") and text[a - 1] == " " for a, b in holes)
    assert min(at_line_end, inside_line, whole_lines, after_colon_indent) > 5


def test_fim_samples_hold_prefix_suffix_middle_of_one_window(prepared):
    rng = np.random.default_rng(1)
    files = prepared.files(heldout=False)
    samples = make_samples(prepared, files, rng, row_len=129, fim_rate=1.0)
    fim = [s for s in samples if s[1] == FIM_BEGIN_ID]
    assert len(fim) > 10
    tok = prepared.tokenizer
    corpus_text = b"".join(prepared.texts).decode()
    for s in fim:
        assert len(s) <= 129 and s[0] == BOS_ID and s[-1] == EOS_ID
        hole, end = s.index(FIM_HOLE_ID), s.index(FIM_END_ID)
        prefix, suffix, middle = (tok.decode(x, skip_special_tokens=False)
                                  for x in (s[2:hole], s[hole + 1:end], s[end + 1:-1]))
        assert prefix + middle + suffix in corpus_text


def test_plain_samples_end_with_eos_only_at_the_end_of_a_file(prepared):
    rng = np.random.default_rng(2)
    samples = make_samples(prepared, prepared.files(heldout=False), rng, row_len=129, fim_rate=0.0)
    assert all(s[0] == BOS_ID and FIM_BEGIN_ID not in s for s in samples)
    assert sum(s[-1] == EOS_ID for s in samples) == len(prepared.files(heldout=False))


def test_pack_rows_never_splits_a_sample():
    lengths = (100, 30, 60, 10, 128, 5, 90)
    samples = [[10 + i] * n for i, n in enumerate(lengths)]
    rows = pack_rows(samples, row_len=128)
    assert len(rows) == 4                              # 100+10+5, 30+60, 128, 90
    for i, n in enumerate(lengths):                    # each sample whole, in one row
        holders = [r for r in rows if (r == 10 + i).any()]
        assert len(holders) == 1 and (holders[0] == 10 + i).sum() == n
    for r in rows:                                     # padding only at the end of a row
        filled = int((r >= 0).sum())
        assert (r[:filled] >= 0).all() and (r[filled:] == -1).all()


def test_worker_processes_build_the_epochs_the_loop_would_build(prepared):
    feeder = EpochFeeder(prepared, seed=3, row_len=129, fim_rate=0.5, workers=1, parts=2)
    try:
        built_here = feeder.get(0)
        built_ahead = feeder.get(1)                    # by a worker, from the corpus cache folder
    finally:
        feeder.close()
    assert isinstance(feeder.pool, ProcessPoolExecutor)      # the worker did not fail over to a thread
    assert np.array_equal(built_here, epoch_rows(prepared, 3, 0, 129, 0.5, parts=2))
    assert np.array_equal(built_ahead, epoch_rows(prepared, 3, 1, 129, 0.5, parts=2))
    assert not np.array_equal(built_here, built_ahead)


def test_the_parts_of_an_epoch_hold_each_training_file_once(prepared):
    parts = [epoch_rows(prepared, 5, chunk, 129, fim_rate=0.0, parts=3) for chunk in range(3)]
    file_ends = sum(int((rows == EOS_ID).sum()) for rows in parts)
    assert file_ends == len(prepared.files(heldout=False))
    assert all(len(rows) for rows in parts)


def test_schedule_warms_up_stays_constant_and_a_decay_branch_falls_to_zero():
    assert warmup_factor(0, 0, 100) == pytest.approx(0.01)
    assert warmup_factor(99, 0, 100) == warmup_factor(10_000, 0, 100) == 1.0     # no length needed
    assert warmup_factor(1000, 1000, 100) == pytest.approx(0.01)    # a fresh optimizer warms up again
    assert decay_factor(0, 50) == 1.0 and decay_factor(50, 50) == 0.0
    assert decay_factor(25, 100) == pytest.approx(0.5)               # 1 - sqrt(progress)


def test_muon_takes_the_2d_hidden_matrices_and_adamw_the_rest():
    model = build_model(hf_config(PRESETS["tiny"], vocab_size=600), "auto")
    adamw, muon = make_optimizers(model, "muon", 1e-3, 0.1, "cpu").optimizers
    assert isinstance(muon, torch.optim.Muon) and isinstance(adamw, torch.optim.AdamW)
    names = {id(p): n for n, p in model.named_parameters()}
    in_muon = {names[id(p)] for g in muon.param_groups for p in g["params"]}
    in_adamw = {names[id(p)] for g in adamw.param_groups for p in g["params"]}
    assert in_muon | in_adamw == set(names.values()) and not in_muon & in_adamw
    assert "model.layers.0.self_attn.q_a_proj.weight" in in_muon and "model.layers.0.mlp.gate_proj.weight" in in_muon
    assert "model.layers.1.mlp.shared_experts.up_proj.weight" in in_muon
    for name in ("model.embed_tokens.weight", "lm_head.weight", "model.layers.1.mlp.gate.weight",
                 "model.layers.1.mlp.experts.gate_up_proj", "model.norm.weight"):
        assert name in in_adamw
    assert len(make_optimizers(model, "adamw", 1e-3, 0.1, "cpu").optimizers) == 1


def test_export_splits_fused_experts_into_deepseek_names():
    config = hf_config(PRESETS["tiny"], vocab_size=600)
    model = build_model(config, "auto")
    state = export_state_dict(model.state_dict(), config)
    experts, inter = config["n_routed_experts"], config["moe_intermediate_size"]
    for e in range(experts):
        for proj in ("gate", "up", "down"):
            assert f"model.layers.1.mlp.experts.{e}.{proj}_proj.weight" in state
    assert state["model.layers.1.mlp.experts.0.gate_proj.weight"].shape == (inter, config["hidden_size"])
    assert not any(k.endswith(("gate_up_proj", "experts.down_proj")) for k in state)
    assert "model.layers.0.mlp.gate_proj.weight" in state and "lm_head.weight" in state


def test_bad_arguments_exit_with_status_2(capsys, tmp_path):
    assert main(["--seq-len", "8", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("latent train: error:")
    assert main(["--corpus-cache", str(tmp_path / "nope"), "--out", str(tmp_path)]) == 2
    assert main(["--help"]) == 0


@pytest.mark.slow
def test_train_end_to_end_writes_a_folder_transformers_loads(tiny_corpus, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "run"
    argv = ["--corpus-dir", str(tiny_corpus), "--vocab-size", "600", "--preset", "tiny",
            "--seq-len", "128", "--batch-size", "8", "--minutes", "0.25", "--eval-every", "0.05",
            "--log-every", "5", "--threads", "2", "--no-compile", "--decay-steps", "2", "--out", str(out)]
    assert main(argv) == 0
    folder = out / "model"
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["README.md", "config.json", "generation_config.json", "model.safetensors",
                     "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json", "training.json"]
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "deepseek_v2" and config["q_lora_rank"] and config["n_shared_experts"] == 1
    assert config["fim_layouts"] == ["spm"] and config["languages"] == ["python"]

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    ids = tok(TRICKY).input_ids
    assert ids[0] == BOS_ID and tok.decode(ids[1:]) == TRICKY

    # The saved weights are the decay branch's, in bf16 (the checkpoint holds the stable run's).
    reference = build_model(config, "auto").eval()
    assert torch.equal(model.lm_head.weight, model.lm_head.weight.to(torch.bfloat16).float())
    stable = torch.load(out / "checkpoint.pt", weights_only=False)["model"]
    reference.load_state_dict({k: v.to(torch.bfloat16).float() for k, v in stable.items()})
    assert not torch.equal(reference.lm_head.weight, model.lm_head.weight)
    note = json.loads((folder / "training.json").read_text())
    assert note["decay_steps"] >= 1 and note["tokens"] > 0 and note["cursor"]["tokens"] == note["tokens"]

    # Latent's engine loads it and, since the folder declares SPM, completes a suffix-first prompt.
    from model.engine import Engine
    from model.params import RuntimeConfig, SamplingParams

    engine = Engine.load(folder, RuntimeConfig(threads=1))
    assert "spm" in engine.args.fim_layouts
    generation = engine.generate(DEEPSEEK.fill("def f(x):\n    return ", "\n", "spm"), SamplingParams(max_new_tokens=4))
    generation.run()
    assert generation.stats.generated_tokens >= 1

    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    evals = [r["eval"] for r in log if "eval" in r]
    assert evals[-1]["loss"] < evals[0]["loss"]                   # it learned something
    card = (folder / "README.md").read_text()
    assert "latent train --corpus-dir" in card and "bits per byte" in card and "FIM middle SPM" in card

    # The same command goes on from the checkpoint instead of starting over.
    stopped_at = torch.load(out / "checkpoint.pt", weights_only=False)["state"]["step"]
    more = argv[:argv.index("--minutes")] + ["--max-steps", str(stopped_at + 3), "--no-compile",
                                             "--log-every", "1", "--out", str(out)]
    assert main(more) == 0
    steps = [r["train"]["step"] for r in map(json.loads, (out / "log.jsonl").read_text().splitlines())
             if "train" in r and "decay" not in r["train"]]
    assert steps[-1] == stopped_at + 3


# -- the corpus command: manifest, licenses, filters, held-out packages --------------------

def test_manifest_pins_at_least_150_packages_and_no_heldout_one():
    pins = read_manifest()
    assert len(pins) >= 150
    assert all(p.version and p.version[0].isdigit() for p in pins)
    assert len({p.name for p in pins}) == len(pins)                   # one pin per package
    assert not {p.name for p in pins} & HELDOUT
    assert {"django", "sympy", "sqlalchemy"} <= {p.name for p in pins}


def _meta(**fields) -> Message:
    m = Message()
    for key, value in fields.items():
        for v in value if isinstance(value, list) else [value]:
            m[key.replace("_", "-")] = v
    return m


@pytest.mark.parametrize("fields, allowed", [
    ({"License_Expression": "MIT"}, True),
    ({"License_Expression": "Apache-2.0 OR BSD-3-Clause"}, True),
    ({"License_Expression": "MIT OR GPL-3.0-or-later"}, True),            # either may be chosen
    ({"License_Expression": "MIT AND GPL-3.0-only"}, False),              # both apply
    ({"License_Expression": "MPL-2.0"}, False),
    ({"Classifier": ["License :: OSI Approved :: BSD License", "Programming Language :: Python"]}, True),
    ({"Classifier": ["License :: OSI Approved :: MIT License",
                     "License :: OSI Approved :: GNU General Public License v3 (GPLv3)"]}, False),
    ({"License": "Permission is hereby granted, free of charge, to any person obtaining a copy"}, True),
    ({"License": "GNU Lesser General Public License v3"}, False),
    ({"License": "Apache 2.0"}, True),
    ({"License": "UNKNOWN"}, False),
    ({}, False),
])
def test_license_allowlist_reads_expression_classifiers_and_text(fields, allowed):
    assert classify(_meta(**fields))[1] is allowed


def test_expression_decides_before_classifiers():
    meta = _meta(License_Expression="GPL-3.0-only", Classifier="License :: OSI Approved :: MIT License")
    assert classify(meta) == ("GPL-3.0-only", False)


CODE = "\n".join(f"def function_{i}(x, y):\n    total = x * {i} + y\n    return total - {i}\n" for i in range(30))


def test_filters_drop_generated_code_literal_tables_and_long_lines():
    assert file_problem(CODE.encode()) is None
    assert file_problem(("# Generated by the protocol buffer compiler.  DO NOT EDIT!\n" + CODE).encode()) == "generated"
    assert file_problem(('"""Auto-generated file."""\n' + CODE).encode()) == "generated"
    table = "TABLE = [\n" + "".join(f"    {i}, {i * 7}, 0x{i:04x}, {i * 0.5},\n" for i in range(300)) + "]\n"
    assert file_problem(table.encode()) == "literal_table"
    assert file_problem((CODE + "x = '" + "a" * 2000 + "'\n").encode()) == "long_lines"
    assert file_problem(b"import os\n") == "too_small"
    assert file_problem(b"\xff\xfe" + CODE.encode()) == "not_utf8"


def test_near_duplicates_are_found_and_different_files_are_not():
    near = NearDuplicates()
    assert not near.check_and_add(CODE)
    edited = CODE.replace("def function_7(x, y):", "def function_7(x, y):  # one edit")
    assert near.check_and_add(edited)                                 # Jaccard ~0.95
    other = "\n".join(f"class Thing{i}:\n    name = 'thing {i}'\n    size = {i * 3}\n" for i in range(30))
    assert not near.check_and_add(other)
    half = "\n".join(CODE.splitlines()[:45]) + "\n" + "\n".join(other.splitlines()[45:])
    assert near.similar(near.signature(half)) < 0.85                 # about half shared: kept


def _write_humaneval(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    item = {"task_id": "HumanEval/0", "prompt": 'def has_close_elements(numbers, threshold):\n    """ Check if any two numbers are closer than threshold.\n    >>> has_close_elements([1.0, 2.0, 3.0], 0.5)\n    False\n    """\n',
            "canonical_solution": "    for idx, elem in enumerate(numbers):\n        for idx2, elem2 in enumerate(numbers):\n            if idx != idx2:\n                distance = abs(elem - elem2)\n                if distance < threshold:\n                    return True\n\n    return False\n",
            "suffix": ""}
    with gzip.open(folder / "HumanEval-Fake.jsonl.gz", "wt") as f:
        f.write(json.dumps(item) + "\n")
    return folder


@pytest.mark.parametrize("source", ["the benchmark's files", "the committed windows"])
def test_humaneval_overlap_catches_a_copied_solution_in_other_whitespace(tmp_path, source):
    """The corpus leaves out what HumanEval holds, also on a checkout without the benchmark's
    files: its line windows are committed (model/train/humaneval_windows.bin)."""
    if source == "the committed windows":
        overlap = Overlap.load()
        assert len(overlap.windows) > 1000   # every problem of the three infilling sets
    else:
        overlap = Overlap.humaneval(_write_humaneval(tmp_path / "he"))
        overlap.save(tmp_path / "windows.bin")
        assert Overlap.load(tmp_path / "windows.bin").windows == overlap.windows
    copied = ("import math\n\n\ndef close(numbers, threshold):\n  for idx, elem in enumerate(numbers):\n"
              "    for idx2, elem2 in enumerate(numbers):\n      if idx != idx2:\n"
              "        distance   = abs(elem - elem2)\n        if distance < threshold:\n          return True\n")
    assert overlap.hits(copied)
    assert not overlap.hits(CODE)


def _wheel(folder: Path, name: str, version: str, files: dict[str, str], **meta) -> Path:
    path = folder / f"{name}-{version}-py3-none-any.whl"
    header = "".join(f"{k.replace('_', '-')}: {v}\n" for k, vs in meta.items() for v in (vs if isinstance(vs, list) else [vs]))
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{name}-{version}.dist-info/METADATA", f"Metadata-Version: 2.4\nName: {name}\nVersion: {version}\n{header}")
        for rel, text in files.items():
            z.writestr(rel, text)
    return path


def _sdist(folder: Path, name: str, version: str, files: dict[str, str], **meta) -> Path:
    path = folder / f"{name}-{version}.tar.gz"
    header = "".join(f"{k.replace('_', '-')}: {v}\n" for k, v in meta.items())
    entries = {f"{name}-{version}/PKG-INFO": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n{header}",
               **{f"{name}-{version}/{rel}": text for rel, text in files.items()}}
    with tarfile.open(path, "w:gz") as t:
        for rel, text in entries.items():
            data = text.encode()
            info = tarfile.TarInfo(rel)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return path


def test_vendored_heldout_packages_are_found_in_folders_and_vendor_modules():
    assert vendored_heldout(["pip/_vendor/pygments/lexer.py", "pip/__init__.py"]) == ["pygments"]
    assert vendored_heldout(["setuptools/_vendor/pyparsing.py"]) == ["pyparsing"]
    assert vendored_heldout(["anyio/_backends/_trio.py", "sphinx/util/docutils.py"]) == []


def test_corpus_command_keeps_permissive_filtered_unique_files_and_reports(tmp_path):
    cache = tmp_path / "cache"
    downloads = cache / "downloads"
    downloads.mkdir(parents=True)
    other = "\n".join(f"class Thing{i}:\n    name = 'thing {i}'\n    size = {i * 3}\n" for i in range(30))
    solution = ("def close(numbers, threshold):\n    for idx, elem in enumerate(numbers):\n"
                "        for idx2, elem2 in enumerate(numbers):\n            if idx != idx2:\n"
                "                distance = abs(elem - elem2)\n                if distance < threshold:\n"
                "                    return True\n    return False\n")
    _wheel(downloads, "goodpkg", "1.0", {"goodpkg/__init__.py": CODE, "goodpkg/things.py": other,
                                         "goodpkg/copy.py": CODE, "goodpkg/leak.py": solution + CODE[:200]},
           License_Expression="MIT")
    _sdist(downloads, "apachepkg", "2.0", {"apachepkg/near.py": CODE.replace("return total - 7", "return total - 8"),
                                           "apachepkg/gen_pb2.py": "# Generated by the protocol buffer compiler.  DO NOT EDIT!\n" + other + "\n# v2\n"},
           Classifier="License :: OSI Approved :: Apache Software License")
    _sdist(downloads, "gplpkg", "0.1", {"gplpkg/core.py": other + "\n# gpl\n"}, License="GPL-3.0")
    _wheel(downloads, "vendoring", "3.0", {"vendoring/_vendor/click/core.py": other + "\n# click\n",
                                           "vendoring/main.py": other + "\n# main\n"}, License_Expression="BSD-3-Clause")
    manifest = tmp_path / "manifest.txt"
    manifest.write_text("# test\ngoodpkg==1.0\napachepkg==2.0\ngplpkg==0.1\nvendoring==3.0\n")

    report = collect(cache, manifest, _write_humaneval(tmp_path / "he"), stdlib=False, log=lambda *_: None)

    kept = sorted(p.relative_to(cache / "files").as_posix() for p in (cache / "files").rglob("*.py"))
    assert kept == ["goodpkg/goodpkg/__init__.py", "goodpkg/goodpkg/things.py"]
    by_name = {p["name"]: p for p in report["packages"]}
    assert by_name["goodpkg"]["dropped"] == {"exact_duplicate": 1, "humaneval": 1}
    assert by_name["apachepkg"]["dropped"] == {"generated": 1, "near_duplicate": 1}
    assert by_name["gplpkg"]["status"] == "dropped: license"
    assert by_name["vendoring"]["status"] == "dropped: vendors held-out click"
    assert report["totals"]["kept_files"] == 2
    assert report["totals"]["dropped"]["humaneval"] == 1
    md = (cache / "report.md").read_text()
    assert "| MIT | 1 | 1 |" in md and "| gplpkg | 0.1 | GPL-family | dropped: license |" in md
    assert json.loads((cache / "report.json").read_text())["manifest_sha256"]

    manifest.write_text("goodpkg==1.0\nclick==8.0\n")
    with pytest.raises(ValueError, match="held-out"):
        collect(cache, manifest, None, stdlib=False, log=lambda *_: None)


# -- both FIM layouts, sizes, export --------------------------------------------------------

def test_spm_sample_is_the_tokenizers_encoding_of_the_spm_prompt_then_the_middle(prepared):
    tok = prepared.tokenizer
    prefix, middle, suffix = "def area(r):\n    return ", "3.14159 * r", " ** 2\n\nprint(area(2))\n"
    enc = lambda text: tok.encode(text, add_special_tokens=False).ids        # noqa: E731
    ids, middle_at = fim_ids(enc(prefix), enc(suffix), enc(middle), row_len=512, layout="spm")
    prompt = tok.encode(DEEPSEEK.fill(prefix, suffix, "spm"), add_special_tokens=True).ids
    assert ids == prompt + enc(middle) + [EOS_ID]
    assert middle_at == len(prompt)
    psm, _ = fim_ids(enc(prefix), enc(suffix), enc(middle), row_len=512, layout="psm")
    assert psm == tok.encode(DEEPSEEK.fill(prefix, suffix, "psm"), add_special_tokens=True).ids + enc(middle) + [EOS_ID]


def test_fim_samples_come_in_both_layouts_about_half_each(prepared):
    rng = np.random.default_rng(4)
    samples, middles = marked_samples(prepared, prepared.files(heldout=False), rng, 129, fim_rate=1.0, spm_rate=0.5)
    spm = [s for s in samples if s[1:3] == [FIM_BEGIN_ID, FIM_HOLE_ID]]
    psm = [s for s in samples if s[1] == FIM_BEGIN_ID and s[2] != FIM_HOLE_ID]
    assert len(spm) + len(psm) == len(samples) and 0.35 < len(spm) / len(samples) < 0.65
    tok = prepared.tokenizer
    corpus_text = b"".join(prepared.texts).decode()
    for s, m in zip(samples, middles):
        if s in spm:                     # BOS begin hole suffix end prefix | middle EOS
            end = s.index(FIM_END_ID)
            suffix, prefix, middle = (tok.decode(x, skip_special_tokens=False) for x in (s[3:end], s[end + 1:m], s[m:-1]))
            assert prefix + middle + suffix in corpus_text


class _AlwaysSays(torch.nn.Module):
    """A "model" whose greedy pick is always one token."""

    def __init__(self, token: int, vocab: int):
        super().__init__()
        self.token, self.vocab = token, vocab

    def forward(self, input_ids):
        logits = torch.zeros(*input_ids.shape, self.vocab)
        logits[..., self.token] = 1.0
        return type("Out", (), {"logits": logits})()


@pytest.mark.parametrize("layout", ["psm", "spm"])
def test_heldout_first_middle_token_accuracy_counts_the_first_token_of_each_middle(prepared, layout):
    from model.train.evaluate import EVAL_SEED, HeldOut

    heldout = HeldOut(prepared, row_len=129, device="cpu", batch_size=8)
    files = prepared.files(heldout=True)
    samples, middles = marked_samples(prepared, files, np.random.default_rng(EVAL_SEED), 129, 1.0,
                                      1.0 if layout == "spm" else 0.0)
    firsts = [s[m] for s, m in zip(samples, middles) if m is not None]
    assert len(firsts) >= 5
    token = max(set(firsts), key=firsts.count)               # the commonest first token, and one that is not
    for picked in (token, min(set(range(600)) - set(firsts))):
        figures = heldout.evaluate(_AlwaysSays(picked, 600))
        assert figures[f"fim_first_token_acc_{layout}"] == pytest.approx(firsts.count(picked) / len(firsts))


def test_config_declares_layouts_and_language():
    config = hf_config(PRESETS["tiny"], vocab_size=600)
    assert config["fim_layouts"] == ["psm", "spm"] and config["languages"] == ["python"]


@pytest.mark.parametrize("preset", ["small", "medium", "large"])
def test_presets_hold_15_to_40m_parameters_and_fit_64_mib_in_bf16(preset):
    from model.train.sizing import parameter_count

    n = parameter_count(preset, 8192)
    assert 15e6 <= n <= 40e6 and 2 * n <= 64 * 2**20


def test_prepared_ids_fit_a_size_budget_by_leaving_out_training_files(tiny_corpus, tmp_path):
    full = prepare_corpus(tiny_corpus, tmp_path / "full", vocab_size=600, log=lambda *_: None)
    small = prepare_corpus(tiny_corpus, tmp_path / "small", vocab_size=600, log=lambda *_: None, max_mib=0.005)
    assert (tmp_path / "small" / "ids.xz").stat().st_size <= 0.005 * 2**20
    assert not (tmp_path / "full" / "ids.xz").exists()          # unbudgeted: raw ids, mapped from disk
    assert (tmp_path / "full" / "ids.u16").stat().st_size == 2 * sum(len(x) for x in full.ids)
    assert small.meta["left_out_for_size"]["files"] > 0
    assert len(small.paths) + small.meta["left_out_for_size"]["files"] == len(full.paths)
    assert small.files(heldout=True) and small.meta["heldout"] == full.meta["heldout"]   # held-out files stay


def test_sharded_bf16_folder_loads_into_the_engine_widened_to_float32(prepared, tmp_path):
    from model.loader import load_model, read_args

    config = hf_config(PRESETS["tiny"], vocab_size=600)
    torch.manual_seed(0)
    model = build_model(config, "auto")
    tensors = export_state_dict(model.state_dict(), config)
    folder = tmp_path / "sharded"
    write_model_folder(tensors, config, prepared.root, folder, "# card\n", shard_mib=0.2)
    shards = sorted(p.name for p in folder.glob("*.safetensors"))
    assert len(shards) > 1 and (folder / "model.safetensors.index.json").is_file()
    assert all((folder / s).stat().st_size <= 0.2 * 2**20 for s in shards)
    args = read_args(folder)
    assert args.fim_layouts == ("psm", "spm") and args.languages == ("python",)
    ours = load_model(folder, args)
    assert ours.embed.weight.dtype == torch.float32
    assert torch.equal(ours.embed.weight, tensors["model.embed_tokens.weight"].float())
