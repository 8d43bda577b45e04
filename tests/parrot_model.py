"""A tiny DeepSeek-V2 checkpoint that always suggests the same text, for editor tests.

The editor tests need ghost text a person can read on screen. The bundled model gives that;
before it exists (or when a test wants a known answer) this module trains, in a few seconds of
CPU, a 3-layer DeepSeek-V2 look-alike (MoE + MLA, the same as tests/tiny_models.py) whose
only skill is: after `<｜fim▁end｜>` say ANSWER, then end of sentence. It goes through the real
loading path (Hugging Face folder, tokenizer files), like any checkpoint.

    python tests/parrot_model.py OUT_DIR      # writes the folder (cached by content)
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

ANSWER = "latent_answer + 1"
VERSION = 1  # bump to retrain cached copies


def build(out: Path, answer: str = ANSWER, steps: int = 160, seed: int = 0) -> Path:
    """Train and save the parrot model into `out` (skipped when `out` already holds it)."""
    stamp = out / "parrot.json"
    key = hashlib.sha256(f"{VERSION}|{answer}|{steps}|{seed}".encode()).hexdigest()[:16]
    if stamp.is_file() and json.loads(stamp.read_text()).get("key") == key:
        return out
    import torch
    from tokenizers import Tokenizer

    from tiny_models import SPECIALS, build_reference, write_tokenizer

    out.mkdir(parents=True, exist_ok=True)
    write_tokenizer(out)
    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    bos, eos, fim_begin, fim_hole, fim_end = (tok.token_to_id(s) for s in SPECIALS)
    target = tok.encode(answer, add_special_tokens=False).ids + [eos]
    vocab = tok.get_vocab_size()

    torch.manual_seed(seed)
    model = build_reference("v2-greedy-yarn", seed).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    batch = 8
    for step in range(steps):
        rows, masks = [], []
        for _ in range(batch):  # <bos><fim_begin>prefix<fim_hole>suffix<fim_end>ANSWER<eos>
            n_pre, n_suf = torch.randint(0, 60, (2,)).tolist()
            prefix = torch.randint(len(SPECIALS), vocab, (n_pre,)).tolist()
            suffix = torch.randint(len(SPECIALS), vocab, (n_suf,)).tolist()
            prompt = [bos, fim_begin, *prefix, fim_hole, *suffix, fim_end]
            rows.append(prompt + target)
            masks.append([0] * len(prompt) + [1] * len(target))
        width = max(map(len, rows))
        ids = torch.tensor([r + [eos] * (width - len(r)) for r in rows])                 # (B, T)
        mask = torch.tensor([m + [0] * (width - len(m)) for m in masks], dtype=torch.bool)
        logits = model(input_ids=ids[:, :-1]).logits                                      # (B, T-1, V)
        labels = ids[:, 1:].masked_fill(~mask[:, 1:], -100)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval().save_pretrained(out)
    stamp.write_text(json.dumps({"key": key, "answer": answer, "final_loss": float(loss.detach())}))
    return out


if __name__ == "__main__":
    print(build(Path(sys.argv[1])))
