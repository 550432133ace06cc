"""The text-embedding cache: hits skip the encoder, keys separate encoders, files survive restarts."""
import torch

from engine.models.text_cache import TextCache, encode_cached


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


def test_story_with_a_text_cache_encodes_each_prompt_once(tiny_models, photo, tiny_settings, settings_with, tmp_path):
    from engine.svi import generate_story

    settings = settings_with(tiny_settings, num_frames=5)
    real_encoder = tiny_models.text_encoder
    calls = []

    def counting(ids, mask):
        calls.append(ids.shape[0])
        return real_encoder(ids, mask)

    tiny_models.text_cache = TextCache(tmp_path, "tiny@32")
    tiny_models.text_encoder = counting
    try:
        first = generate_story(tiny_models, photo, ["a cat walks"], settings)
        again = generate_story(tiny_models, photo, ["a cat walks"], settings)
    finally:
        tiny_models.text_cache, tiny_models.text_encoder = None, real_encoder
    uncached = generate_story(tiny_models, photo, ["a cat walks"], settings)
    assert calls == [1]  # the re-roll read the embedding from disk
    assert (first[0].frames == again[0].frames).all()
    assert (first[0].frames == uncached[0].frames).all()  # cached embeddings give the same video


def test_prompts_are_cleaned_before_the_cache_key(tiny_models, photo, tiny_settings, settings_with, tmp_path):
    from engine.svi import generate_story

    settings = settings_with(tiny_settings, num_frames=5)
    real_encoder = tiny_models.text_encoder
    calls = []

    def counting(ids, mask):
        calls.append(ids.shape[0])
        return real_encoder(ids, mask)

    tiny_models.text_cache = TextCache(tmp_path, "tiny@32")
    tiny_models.text_encoder = counting
    try:
        first = generate_story(tiny_models, photo, ["a cat  walks"], settings)
        again = generate_story(tiny_models, photo, [" a cat walks\n"], settings)
    finally:
        tiny_models.text_cache, tiny_models.text_encoder = None, real_encoder
    assert calls == [1]  # both clean to "a cat walks", so the second story reads the first one's embedding
    assert TextCache(tmp_path, "tiny@32").get("a cat walks") is not None
    assert (first[0].frames == again[0].frames).all()
