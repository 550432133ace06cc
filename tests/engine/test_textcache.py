"""The text-embedding cache: hits skip the encoder, keys separate encoders, files survive restarts."""
import torch

from engine.textcache import TextCache, encode_cached


class CountingEncoder:
    def __init__(self, scale: float = 1.0) -> None:
        self.calls: list[list[str]] = []
        self.scale = scale

    def __call__(self, texts):
        self.calls.append(list(texts))
        # (N, L=4, text_dim=3): a different, deterministic embedding per text
        return torch.stack([torch.full((4, 3), float(len(t)) * self.scale) for t in texts])


def test_second_encode_of_the_same_prompts_skips_the_encoder(tmp_path):
    cache = TextCache(tmp_path, "umt5@512")
    enc = CountingEncoder()
    first = encode_cached(["a cat walks", "a dog runs fast", "a cat walks"], cache, enc)
    assert enc.calls == [["a cat walks", "a dog runs fast"]]  # one pass, duplicates once
    assert first.shape == (3, 4, 3)
    again = encode_cached(["a dog runs fast", "a cat walks"], TextCache(tmp_path, "umt5@512"), enc)
    assert len(enc.calls) == 1  # a fresh cache object over the same folder: all hits
    assert torch.equal(again[0], first[1]) and torch.equal(again[1], first[0])


def test_only_new_prompts_are_encoded(tmp_path):
    cache = TextCache(tmp_path, "umt5@512")
    enc = CountingEncoder()
    encode_cached(["one"], cache, enc)
    encode_cached(["one", "two two"], cache, enc)
    assert enc.calls == [["one"], ["two two"]]


def test_another_encoder_does_not_share_entries(tmp_path):
    enc_a, enc_b = CountingEncoder(1.0), CountingEncoder(10.0)
    a = encode_cached(["same text"], TextCache(tmp_path, "umt5-bf16@512"), enc_a)
    b = encode_cached(["same text"], TextCache(tmp_path, "umt5-fp8@512"), enc_b)
    assert len(enc_b.calls) == 1
    assert not torch.equal(a, b)
    assert TextCache(tmp_path, "umt5-bf16@512").path("same text") != TextCache(tmp_path, "umt5-fp8@512").path("same text")
