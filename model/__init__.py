"""The model: a DeepSeek-V2/V3 network (MoE + Multi-head Latent Attention), its engine, its
serving and its training. Nothing here knows about LSP, editors or tree-sitter.

At the top, the network and its loading, one idea per file:
`config.py` (`ModelArgs` from config.json), `rope.py` (YaRN rotary tables), `mla.py` (latent
attention, absorbed and naive), `moe.py` (routing and experts), `transformer.py` (the decoder),
`quant.py` (int8 weights), `loader.py` (checkpoint folders, one rename table), `tokenizer.py`,
`fim.py` (each family's FIM tokens and layouts, the one renderer).

What everything above relies on: `protocol.py` (the engine protocol every backend implements)
and `params.py` (`SamplingParams`, `RuntimeConfig`), whose fields are `options.py` options;
`private_files.py` writes and reads the files only this user may see (the daemon's key, its cache).
`torch_private.py` holds every PyTorch call without a stability promise (int8 kernels, AOTInductor).

Rooms of their own:
- `engine/` — the in-process engine (radix cache, live buffer, generation, persistence);
- `serve/` — the shared daemon, its torch-free client, the OpenAI face, the remote backend;
- `train/` — the corpus, samples, training loop and export of the bundled model;
- `bundled/` — the default model files.
"""
