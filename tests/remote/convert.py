"""Convert a Latent checkpoint to GGUF with llama.cpp's own converter.

    python tests/remote/convert.py LLAMA_CPP_DIR MODEL_DIR OUT.gguf [OUTTYPE]     (f32 unless given: q8_0, bf16, …)

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

def _q_lora_rank_zero(cls):
    """llama.cpp takes a DeepSeek-V2 model without a query LoRA (Lite's plain q_proj) only when it
    has Lite's 26 or 27 layers; any other depth must say q_lora_rank = 0 to be read the same way."""
    original = cls.set_gguf_parameters

    def set_gguf_parameters(self):
        original(self)
        if self.hparams.get("q_lora_rank") is None:
            self.gguf_writer.add_q_lora_rank(0)
    cls.set_gguf_parameters = set_gguf_parameters


try:
    import conversion.deepseek as deepseek  # noqa: E402  (newer llama.cpp: the model classes moved here)
except ImportError:
    deepseek = convert
_q_lora_rank_zero(deepseek.DeepseekV2Model)
outtype = sys.argv[4] if len(sys.argv) > 4 else "f32"
sys.argv = ["convert_hf_to_gguf.py", str(model), "--outfile", str(out), "--outtype", outtype]
convert.main()
