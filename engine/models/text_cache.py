"""Disk cache of prompt embeddings keyed by (prompt, text encoder), so re-rolls skip UMT5-XXL.

On a T4 the encoder does not fit beside the placed experts; with the cache it only runs for new text.
"""
from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass(frozen=True)
class TextCache:
    root: Path  # e.g. DataDir.cache / "text"
    encoder_id: str  # names the encoder's weights and length, e.g. "Wan-AI/Wan2.2-I2V-A14B-Diffusers/text_encoder@512"

    def path(self, prompt: str) -> Path:
        digest = hashlib.sha256(f"{self.encoder_id}\0{prompt}".encode()).hexdigest()
        return self.root / digest[:2] / f"{digest}.safetensors"

    def get(self, prompt: str) -> torch.Tensor | None:
        """The cached (L, text_dim) embedding, or None when this text was never encoded."""
        from safetensors.torch import load_file

        p = self.path(prompt)
        if not p.exists():
            return None
        stored = load_file(str(p))
        # The prompt is stored beside its embedding, so a hash collision can never return wrong text.
        if bytes(stored["prompt"].tolist()).decode() != prompt:
            return None
        return stored["embedding"]

    def put(self, prompt: str, embedding: torch.Tensor) -> None:
        from safetensors.torch import save_file

        from storage.files import atomic_path

        p = self.path(prompt)
        text = torch.tensor(list(prompt.encode()), dtype=torch.uint8)
        # atomic: a crash never leaves half a file under the real name; a full disk raises DiskFull
        with atomic_path(p) as tmp:
            save_file({"embedding": embedding.detach().cpu().contiguous(), "prompt": text}, str(tmp))


def encode_cached(texts: list[str], cache: TextCache, encode: Callable[[list[str]], torch.Tensor]) -> torch.Tensor:
    """Embeddings (N, L, text_dim) for `texts`; only the ones not cached go through `encode`, in one pass."""
    found = {t: cache.get(t) for t in dict.fromkeys(texts)}
    missing = [t for t, e in found.items() if e is None]
    if missing:
        fresh = encode(missing)  # (M, L, text_dim)
        for text, emb in zip(missing, fresh):
            cache.put(text, emb)
            found[text] = emb.detach().cpu()
    return torch.stack([found[t] for t in texts])  # (N, L, text_dim) on the CPU
