#!/usr/bin/env python3
"""Writes a random Llama model as a Hugging Face directory (config.json + bf16 safetensors)
for benchmarks that need shapes the embedded model lacks: tensor parallelism over 2 or 4
ranks needs head counts SmolLM2's 9/3 heads cannot split. Weights are random (N(0, 0.02)),
so only speed means anything; the size is SmolLM2-135M's, with 8 query and 4 key/value heads.

    python3 scripts/make_synthetic_model.py .cache/models/synthetic-8h
"""
import json
import os
import sys

import numpy as np


def bf16(a):
    """float32 -> bfloat16 bits (round to nearest even), stored as uint16 with dtype BF16."""
    bits = a.astype(np.float32).view(np.uint32)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    return rounded


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else ".cache/models/synthetic-8h"
    hidden, heads, kv, layers, inter, vocab = 512, 8, 4, 30, 1536, 49152
    hd = hidden // heads
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": hidden,
              "intermediate_size": inter, "num_hidden_layers": layers, "num_attention_heads": heads,
              "num_key_value_heads": kv, "head_dim": hd, "vocab_size": vocab, "rms_norm_eps": 1e-5,
              "rope_theta": 100000.0, "max_position_embeddings": 8192, "tie_word_embeddings": True,
              "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "bfloat16"}
    rng = np.random.default_rng(0)
    tensors = {"model.embed_tokens.weight": rng.normal(0, 0.02, (vocab, hidden)), "model.norm.weight": np.ones(hidden)}
    for l in range(layers):
        p = f"model.layers.{l}."
        tensors[p + "input_layernorm.weight"] = np.ones(hidden)
        tensors[p + "post_attention_layernorm.weight"] = np.ones(hidden)
        for name, shape in (("self_attn.q_proj", (heads * hd, hidden)), ("self_attn.k_proj", (kv * hd, hidden)),
                            ("self_attn.v_proj", (kv * hd, hidden)), ("self_attn.o_proj", (hidden, heads * hd)),
                            ("mlp.gate_proj", (inter, hidden)), ("mlp.up_proj", (inter, hidden)), ("mlp.down_proj", (hidden, inter))):
            tensors[p + name + ".weight"] = rng.normal(0, 0.02, shape)
    os.makedirs(out, exist_ok=True)
    # safetensors' numpy writer has no bfloat16: write the header by hand.
    header, offset, blobs = {}, 0, []
    for name, a in tensors.items():
        b = bf16(a).tobytes()
        header[name] = {"dtype": "BF16", "shape": list(a.shape), "data_offsets": [offset, offset + len(b)]}
        offset += len(b)
        blobs.append(b)
    head = json.dumps(header).encode()
    head += b" " * ((8 - len(head) % 8) % 8)
    with open(os.path.join(out, "model.safetensors"), "wb") as f:
        f.write(len(head).to_bytes(8, "little"))
        f.write(head)
        for b in blobs:
            f.write(b)
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(config, f, indent=1)
    print(f"wrote {out}: {layers} layers, hidden {hidden}, {heads}/{kv} heads, {offset / 1e6:.0f} MB bf16")


if __name__ == "__main__":
    main()
