"""An independent PEFT -> TensorRT-LLM LoRA conversion in NumPy (the test's own, not Facet's):
`model.lora_weights` rows of A `[r, in]` then B `[out, r]` times the scale, zero-padded,
and `model.lora_config` rows `[module_id, layer, r]`, both with Triton's leading 1."""
import json
import os
import re
import struct

import numpy as np

# TensorRT-LLM's module ids for Llama (gate_proj is mlp_h_to_4h, up_proj is mlp_gate).
MODULE_IDS = {"q_proj": 1, "k_proj": 2, "v_proj": 3, "o_proj": 4, "gate_proj": 5, "down_proj": 6, "up_proj": 7}
DTYPES = {"F32": np.float32, "F16": np.float16}


def read_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        out[name] = np.frombuffer(data[8 + n + start:8 + n + end], dtype=DTYPES[info["dtype"]]).reshape(info["shape"])
    return out


def convert(adapter_dir, dtype=np.float16):
    config = json.load(open(os.path.join(adapter_dir, "adapter_config.json")))
    tensors = read_safetensors(os.path.join(adapter_dir, "adapter_model.safetensors"))
    rows, keys = [], []
    pattern = re.compile(r"layers\.(\d+)\.(?:self_attn|mlp)\.(\w+)\.lora_A\.weight$")
    for name in sorted(tensors):
        m = pattern.search(name)
        if not m:
            continue
        layer, module = int(m.group(1)), m.group(2)
        a = tensors[name].astype(np.float32)
        b = tensors[name.replace("lora_A", "lora_B")].astype(np.float32)
        r = a.shape[0]
        alpha = config.get("alpha_pattern", {}).get(module, config["lora_alpha"])
        scale = alpha / (np.sqrt(r) if config.get("use_rslora") else r)
        rows.append(np.concatenate([a.reshape(-1), (b * scale).reshape(-1)]))
        keys.append([MODULE_IDS[module], layer, r])
    width = max(len(row) for row in rows)
    weights = np.zeros((1, len(rows), width), dtype=dtype)
    for i, row in enumerate(rows):
        weights[0, i, :len(row)] = row
    return weights, np.array([keys], dtype=np.int32)
