"""The `tiny` preset: random-weight components shaped like Wan 2.2 I2V A14B, built in code.

It is the smoke model for tests and GPU-less machines. The init seed is fixed, so it is deterministic.
"""
from __future__ import annotations

import torch

TINY_INIT_SEED = 1234  # fixed so every process builds the same random weights
TINY_MAX_SEQUENCE_LENGTH = 32  # the real model pads text to 512 tokens; tiny keeps it short

# Same layout as the packaged A14B config (36 in, 16 out, no CLIP, RMS-norm across heads), tiny widths.
TINY_TRANSFORMER = dict(
    patch_size=(1, 2, 2),
    num_attention_heads=2,
    attention_head_dim=12,
    in_channels=36,  # 16 noisy latent + 4 mask + 16 conditioning
    out_channels=16,
    text_dim=32,  # equals the tiny UMT5's d_model
    freq_dim=256,
    ffn_dim=32,
    num_layers=2,
    cross_attn_norm=True,
    qk_norm="rms_norm_across_heads",
    eps=1e-6,
    image_dim=None,  # Wan 2.2 I2V has no CLIP image encoder
    added_kv_proj_dim=None,
    rope_max_seq_len=32,
)

# The Wan 2.1 VAE's structure (16 latent channels, 4x time and 8x space compression) at minimal width.
TINY_VAE = dict(
    base_dim=3,
    z_dim=16,
    dim_mult=[1, 1, 1, 1],
    num_res_blocks=1,
    temperal_downsample=[False, True, True],
)

TINY_UMT5 = dict(
    d_model=32,
    d_ff=37,
    d_kv=8,
    num_heads=4,
    num_layers=2,
    relative_attention_num_buckets=8,
    dropout_rate=0.0,
)

_WORDS = (
    "a the and of in on with to is walk walks walking run runs running fly flies flying "
    "jump dance turn look smile wave sit stand man woman dog cat bird car street city sky "
    "sea beach forest mountain camera slowly quickly toward away from up down left right"
).split()


def build_tokenizer():
    """A word-level tokenizer built offline; unknown words map to <unk> (id 2)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    for w in _WORDS:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace()])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
        model_max_length=TINY_MAX_SEQUENCE_LENGTH,
    )


def build_tiny_transformer(seed: int, **overrides):
    from diffusers import WanTransformer3DModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = WanTransformer3DModel(**{**TINY_TRANSFORMER, **overrides})
    return model.eval()


def build_tiny_components() -> dict:
    """Both experts, VAE, UMT5 encoder and tokenizer, on the CPU in fp32."""
    from diffusers import AutoencoderKLWan
    from transformers import UMT5Config, UMT5EncoderModel

    tokenizer = build_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_INIT_SEED)
        vae = AutoencoderKLWan(**TINY_VAE).eval()
        te_config = UMT5Config(vocab_size=len(tokenizer), pad_token_id=0, eos_token_id=1, **TINY_UMT5)
        text_encoder = UMT5EncoderModel(te_config).eval()
    return dict(
        # distinct seeds so the two experts differ, as the real high- and low-noise experts do
        transformer=build_tiny_transformer(TINY_INIT_SEED + 1),
        transformer_2=build_tiny_transformer(TINY_INIT_SEED + 2),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
    )
