"""Convert a Latent checkpoint to GGUF with llama.cpp's own converter.

    python tests/remote/convert.py LLAMA_CPP_DIR MODEL_DIR OUT.gguf

Our tokenizer is a byte-level BPE the converter does not know by its hash; its pre-tokenizer is
GPT-2's regex, so the converter is told "gpt-2" instead of stopping.
"""
import sys
from pathlib import Path

llama, model, out = (Path(a) for a in sys.argv[1:4])
sys.path[:0] = [str(llama), str(llama / "gguf-py")]
import convert_hf_to_gguf as convert  # noqa: E402

for module in [m for name, m in sys.modules.items() if name == "convert_hf_to_gguf" or name.startswith("conversion")]:
    for value in vars(module).values():
        if isinstance(value, type) and "get_vocab_base_pre" in vars(value):
            value.get_vocab_base_pre = lambda self, tokenizer: "gpt-2"
sys.argv = ["convert_hf_to_gguf.py", str(model), "--outfile", str(out), "--outtype", "f32"]
convert.main()
