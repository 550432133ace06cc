"""Fill a models dir (huggingface_hub cache layout) with random files of a preset's real layout.

Every part `engine.models.download.local_preset_files` resolves is written where the Hub would put it:
the two GGUF experts, the VAE, the sharded UMT5-XXL text encoder and its tokenizer, and the four LoRAs
with their real ranks and key formats (SVI 2.0 Pro: PEFT keys with `.default`, rank 128; LightX2V:
ComfyUI keys with `alpha`, rank 64). Large tensors repeat one pool of random bf16 bytes, so writing
~30 GB is bound by the disk, not by the random number generator.
"""
from __future__ import annotations

import json
import struct
import time
from pathlib import Path

import numpy as np
import torch

REVISION = "0" * 40  # the snapshot every repo resolves to
POOL_BYTES = 64 * 1024**2


def snapshot_path(models_dir: Path, repo: str, target: str) -> Path:
    """Where `hf_hub_download(repo, target, cache_dir=models_dir)` finds a file, creating the refs."""
    root = Path(models_dir) / ("models--" + repo.replace("/", "--"))
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / "main").write_text(REVISION)
    path = root / "snapshots" / REVISION / target
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def random_pool(seed: int = 0, std: float = 0.02) -> bytes:
    """POOL_BYTES of N(0, std) values in bf16."""
    g = torch.Generator().manual_seed(seed)
    values = torch.randn(POOL_BYTES // 2, generator=g) * std
    return values.to(torch.bfloat16).view(torch.int16).numpy().tobytes()


def write_safetensors(path: Path, tensors: list[tuple[str, str, tuple, object]], pool: bytes) -> int:
    """Write (name, dtype, shape, fill) entries; fill is "pool" (bf16 bytes of the pool, repeated) or a
    float (every value). Returns the file size."""
    sizes = {"BF16": 2, "F16": 2, "F32": 4}
    header, offset = {}, 0
    for name, dtype, shape, _ in tensors:
        n = int(np.prod(shape, dtype=np.int64)) * sizes[dtype]
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    pool_view = memoryview(pool)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for name, dtype, shape, fill in tensors:
            n = header[name]["data_offsets"][1] - header[name]["data_offsets"][0]
            if fill == "pool":
                assert dtype in ("BF16", "F16")
                while n > 0:
                    chunk = min(n, len(pool_view))
                    f.write(pool_view[:chunk])
                    n -= chunk
            else:
                np_dtype = {"F32": np.float32, "F16": np.float16}.get(dtype)
                if np_dtype is None:  # bf16 constant: the top half of the fp32 bits
                    value = np.full(n // 2, fill, np.float32).view(np.uint32) >> 16
                    f.write(value.astype(np.uint16).tobytes())
                else:
                    f.write(np.full(n // sizes[dtype], fill, np_dtype).tobytes())
    return Path(path).stat().st_size


# -- the parts -----------------------------------------------------------------------------------
LINEARS = [("self_attn.q", "d", "d"), ("self_attn.k", "d", "d"), ("self_attn.v", "d", "d"), ("self_attn.o", "d", "d"),
           ("cross_attn.q", "d", "d"), ("cross_attn.k", "d", "d"), ("cross_attn.v", "d", "d"),
           ("cross_attn.o", "d", "d"), ("ffn.0", "f", "d"), ("ffn.2", "d", "f")]  # (module, out, in)


def svi_lora(num_layers: int, dim: int, ffn: int, rank: int = 128) -> list:
    """SVI 2.0 Pro's keys: `blocks.N.<module>.lora_{A,B}.default.weight`, bf16."""
    size = {"d": dim, "f": ffn}
    out = []
    for i in range(num_layers):
        for module, o, n in LINEARS:
            out.append((f"blocks.{i}.{module}.lora_A.default.weight", "BF16", (rank, size[n]), "pool"))
            out.append((f"blocks.{i}.{module}.lora_B.default.weight", "BF16", (size[o], rank), "pool"))
    return out


def lightx2v_lora(num_layers: int, dim: int, ffn: int, rank: int = 64) -> list:
    """LightX2V's ComfyUI keys: `diffusion_model.blocks.N.<module>.lora_{down,up}.weight` and `.alpha`."""
    size = {"d": dim, "f": ffn}
    out = []
    for i in range(num_layers):
        for module, o, n in LINEARS:
            key = f"diffusion_model.blocks.{i}.{module}"
            out.append((f"{key}.lora_down.weight", "BF16", (rank, size[n]), "pool"))
            out.append((f"{key}.lora_up.weight", "BF16", (size[o], rank), "pool"))
            out.append((f"{key}.alpha", "F32", (), float(rank)))
    return out


def umt5_shards(umt5: dict, shards: int) -> list[list]:
    """UMT5EncoderModel's tensors (tied embedding stored once), split into shards of similar size."""
    from transformers import UMT5Config, UMT5EncoderModel

    cfg = UMT5Config(pad_token_id=0, eos_token_id=1, **umt5)
    with torch.device("meta"):
        sd = UMT5EncoderModel(cfg).state_dict()
    entries = [(k, "BF16", tuple(v.shape), 1.0 if "layer_norm" in k else "pool")
               for k, v in sd.items() if k != "encoder.embed_tokens.weight"]
    total = sum(int(np.prod(s)) for _, _, s, _ in entries)
    out, current, acc = [], [], 0
    for e in entries:
        current.append(e)
        acc += int(np.prod(e[2]))
        if acc >= total * (len(out) + 1) / shards and len(out) < shards - 1:
            out.append(current)
            current = []
    return out + [current]


def write_text_encoder(folder: Path, umt5: dict, pool: bytes, shards: int = 5) -> int:
    from transformers import UMT5Config

    folder.mkdir(parents=True, exist_ok=True)
    cfg = UMT5Config(pad_token_id=0, eos_token_id=1, **umt5)
    cfg.architectures = ["UMT5EncoderModel"]
    cfg.save_pretrained(folder)
    parts = umt5_shards(umt5, shards)
    weight_map, total = {}, 0
    for i, entries in enumerate(parts):
        name = f"model-{i + 1:05d}-of-{len(parts):05d}.safetensors"
        total += write_safetensors(folder / name, entries, pool)
        weight_map.update({k: name for k, _, _, _ in entries})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total},
                                                                     "weight_map": weight_map}))
    return total


def write_vae(path: Path, config_dir: Path) -> int:
    """A randomly initialised Wan VAE in diffusers key names (the loader accepts those), bf16."""
    from diffusers import AutoencoderKLWan
    from safetensors.torch import save_file

    vae = AutoencoderKLWan.from_config(AutoencoderKLWan.load_config(str(config_dir / "vae")))
    save_file({k: v.to(torch.bfloat16).contiguous() for k, v in vae.state_dict().items()}, str(path))
    return path.stat().st_size


def write_tokenizer(folder: Path, max_length: int) -> None:
    from engine.models.tiny import build_tokenizer

    tok = build_tokenizer()
    tok.model_max_length = max_length
    tok.save_pretrained(folder)


def write_models_dir(models_dir: Path, files, transformer_cfg: dict, umt5: dict, seq_len: int, config_dir: Path,
                     layout: str, log=print) -> dict[str, float]:
    """Every part of `files` (an engine.models.presets.ModelFiles); returns GB written per part."""
    from bench.gguf_random import write_random_expert

    pool = random_pool()
    dim = transformer_cfg["num_attention_heads"] * transformer_cfg["attention_head_dim"]
    ffn, layers = transformer_cfg["ffn_dim"], transformer_cfg["num_layers"]
    written = {}

    def timed(part, fn):
        t = time.perf_counter()
        written[part] = fn() / 1e9
        log(f"wrote {part}: {written[part]:.2f} GB in {time.perf_counter() - t:.1f} s")

    timed("high", lambda: write_random_expert(snapshot_path(models_dir, files.high_repo, files.high_file),
                                              transformer_cfg, 1, layout))
    timed("low", lambda: write_random_expert(snapshot_path(models_dir, files.low_repo, files.low_file),
                                             transformer_cfg, 2, layout))
    timed("vae", lambda: write_vae(snapshot_path(models_dir, files.vae_repo, files.vae_file), config_dir))
    te = snapshot_path(models_dir, files.text_encoder_repo, files.text_encoder_folder + "/config.json").parent
    timed("text_encoder", lambda: write_text_encoder(te, umt5, pool))
    tok = snapshot_path(models_dir, files.tokenizer_repo, files.tokenizer_folder + "/x").parent
    write_tokenizer(tok, seq_len)
    for part, make in (("svi_high", svi_lora), ("svi_low", svi_lora),
                       ("lightx2v_high", lightx2v_lora), ("lightx2v_low", lightx2v_lora)):
        path = snapshot_path(models_dir, getattr(files, f"{part}_repo"), getattr(files, f"{part}_file"))
        timed(part, lambda path=path, make=make: write_safetensors(path, make(layers, dim, ffn), pool))
    return written
