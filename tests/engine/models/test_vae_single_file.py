"""The real presets' VAE path: a single safetensors file in ORIGINAL Wan key names (as Comfy-Org's repackaged
`wan_2.1_vae.safetensors` has them) loaded through `engine.models.vae.load_vae` with a packaged config."""
from __future__ import annotations

import json
import re

import pytest
import torch
from safetensors.torch import save_file

from engine.errors import EngineError
from engine.models.presets import wan22_config_dir
from engine.models.tiny import TINY_INIT_SEED, build_tiny_transformer
from engine.models.vae import load_vae

# The Wan 2.1 VAE's layout (widths x1 x2 x4 x4, two res blocks per level, 16 latent channels) at a tiny
# base width. Not the tiny preset's VAE (one res block, flat widths): diffusers' converter hard-codes the
# decoder's block numbering of two res blocks per level, and flat widths would leave the shortcut convs
# that the real file has untested.
SMALL_VAE = dict(base_dim=4, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, temperal_downsample=[False, True, True])

# diffusers' resnet parts -> their index in Wan's `ResidualBlock.residual` Sequential (or its shortcut)
_RESNET_PARTS = {"norm1.gamma": "residual.0.gamma", "conv1": "residual.2", "norm2.gamma": "residual.3.gamma",
                 "conv2": "residual.6", "conv_shortcut": "shortcut"}
_HEAD_PARTS = {"norm_out": "head.0", "conv_out": "head.2", "conv_in": "conv1"}


def _resnet(rest: str) -> str:
    for diffusers_part, wan_part in _RESNET_PARTS.items():
        if rest == diffusers_part or rest.startswith(diffusers_part + "."):
            return wan_part + rest[len(diffusers_part):]
    raise KeyError(rest)


def to_wan_name(key: str, num_res_blocks: int = 2) -> str:
    """diffusers `AutoencoderKLWan` name -> name in Wan's `WanVAE_` (the inverse of diffusers'
    `convert_wan_vae_to_diffusers`)."""
    if m := re.fullmatch(r"(post_)?quant_conv\.(\w+)", key):
        return f"conv{2 if m[1] else 1}.{m[2]}"
    side, rest = key.split(".", 1)  # "encoder" | "decoder"
    for diffusers_part, wan_part in _HEAD_PARTS.items():
        if rest.startswith(diffusers_part + "."):
            return f"{side}.{wan_part}{rest[len(diffusers_part):]}"
    if m := re.fullmatch(r"mid_block\.resnets\.(\d)\.(.+)", rest):
        return f"{side}.middle.{2 * int(m[1])}.{_resnet(m[2])}"  # middle = (resnet, attention, resnet)
    if m := re.fullmatch(r"mid_block\.attentions\.0\.(.+)", rest):
        return f"{side}.middle.1.{m[1]}"
    if m := re.fullmatch(r"down_blocks\.(\d+)\.(.+)", rest):  # encoder: flat list, same numbering as Wan
        part = m[2] if m[2].startswith(("resample.", "time_conv.")) else _resnet(m[2])
        return f"{side}.downsamples.{m[1]}.{part}"
    # decoder: Wan's flat `upsamples` holds per level num_res_blocks + 1 resnets, then one Resample
    per_level = num_res_blocks + 2
    if m := re.fullmatch(r"up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", rest):
        return f"{side}.upsamples.{per_level * int(m[1]) + int(m[2])}.{_resnet(m[3])}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.(.+)", rest):
        return f"{side}.upsamples.{per_level * int(m[1]) + per_level - 1}.{m[2]}"
    raise KeyError(key)


def to_wan_state_dict(model) -> dict[str, torch.Tensor]:
    return {to_wan_name(k): v.contiguous() for k, v in model.state_dict().items()}


def small_vae(seed: int = TINY_INIT_SEED):
    from diffusers import AutoencoderKLWan

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoencoderKLWan(**SMALL_VAE).eval()
        # diffusers inits every RMS-norm gamma to 1 and the attention projections to 0; random values
        # make a wrongly placed tensor change the output
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.copy_(torch.randn_like(p) * 0.2 + (1.0 if name.endswith("gamma") else 0.0))
    return model


@pytest.fixture(scope="module")
def source():
    return small_vae()


@pytest.fixture(scope="module")
def config_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("configs")
    (root / "vae").mkdir()
    (root / "vae" / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKLWan", **SMALL_VAE}))
    return root


@pytest.fixture(scope="module")
def wan_file(source, tmp_path_factory):
    path = tmp_path_factory.mktemp("vae") / "wan_2.1_vae.safetensors"
    save_file(to_wan_state_dict(source), path)
    return path


def test_file_uses_original_wan_names(wan_file):
    from safetensors import safe_open

    with safe_open(str(wan_file), framework="pt") as f:
        keys = set(f.keys())
    # names as in Wan's vae.py: flat downsamples/upsamples, residual Sequential indices, conv1/conv2 quant convs
    for key in ("encoder.conv1.weight", "encoder.downsamples.0.residual.0.gamma", "encoder.downsamples.3.shortcut.weight",
                "encoder.downsamples.5.time_conv.weight", "encoder.middle.1.to_qkv.weight", "encoder.head.2.weight",
                "conv1.weight", "conv2.bias", "decoder.conv1.weight", "decoder.middle.2.residual.6.weight",
                "decoder.upsamples.4.shortcut.weight", "decoder.upsamples.3.time_conv.weight",
                "decoder.upsamples.11.resample.1.weight", "decoder.upsamples.14.residual.3.gamma", "decoder.head.0.gamma"):
        assert key in keys, key
    assert not any(k.startswith(("quant_conv", "post_quant_conv")) or "_blocks." in k or "mid_block" in k for k in keys)


def test_every_parameter_equals_the_source(source, wan_file, config_dir):
    vae = load_vae(wan_file, config_dir, torch.float32)
    loaded, expected = vae.state_dict(), source.state_dict()
    assert loaded.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.equal(loaded[name], tensor), name


def test_encode_decode_matches_the_source_exactly(source, wan_file, config_dir):
    vae = load_vae(wan_file, config_dir, torch.float32)
    video = torch.randn(1, 3, 5, 64, 64, generator=torch.Generator().manual_seed(0))  # (B, C, T, H, W)
    with torch.no_grad():
        outs = []
        for model in (source, vae):
            z = model.encode(video).latent_dist.mode()  # (1, 16, 2, 8, 8): 4x in time (+1), 8x in space
            outs.append((z, model.decode(z).sample))  # (1, 3, 5, 64, 64)
    (z_src, x_src), (z_new, x_new) = outs
    assert z_src.shape == (1, 16, 2, 8, 8) and x_src.shape == video.shape
    assert torch.equal(z_new, z_src)
    assert torch.equal(x_new, x_src)


def test_loads_in_the_requested_dtype(wan_file, config_dir, source):
    vae = load_vae(wan_file, config_dir, torch.bfloat16)
    assert {p.dtype for p in vae.parameters()} == {torch.bfloat16}
    assert torch.equal(vae.decoder.conv_out.weight, source.decoder.conv_out.weight.to(torch.bfloat16))


def test_packaged_config_is_used_offline(wan_file, config_dir, monkeypatch):
    """The file carries the key diffusers' auto-detection looks for; `load_vae` must still take our config
    and never ask the Hub (whose Wan 2.1 config would say base_dim 96)."""
    import huggingface_hub.constants
    from diffusers.loaders import single_file_model
    from diffusers.loaders.single_file_utils import CHECKPOINT_KEY_NAMES, infer_diffusers_model_type
    from safetensors.torch import load_file

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read once at import

    def no_auto_config(*args, **kwargs):
        raise AssertionError("diffusers tried to detect the VAE config from the checkpoint")

    monkeypatch.setattr(single_file_model, "fetch_diffusers_config", no_auto_config)
    checkpoint = load_file(wan_file)
    assert CHECKPOINT_KEY_NAMES["wan_vae"] in checkpoint
    assert infer_diffusers_model_type(checkpoint) == "wan-t2v-14B"  # what auto-detection would have fetched
    vae = load_vae(wan_file, config_dir, torch.float32)
    assert vae.config.base_dim == SMALL_VAE["base_dim"]


def test_file_of_another_model_is_refused(config_dir, tmp_path):
    path = tmp_path / "transformer.safetensors"
    save_file({k: v.contiguous() for k, v in build_tiny_transformer(0).state_dict().items()}, path)
    with pytest.raises(EngineError, match=re.escape(str(path))) as err:
        load_vae(path, config_dir, torch.float32)
    assert re.search(r"(\d+) of its \1 weights are missing", str(err.value))  # none of the VAE's weights


def test_file_missing_one_weight_is_refused(source, config_dir, tmp_path):
    weights = to_wan_state_dict(source)
    del weights["decoder.upsamples.4.shortcut.weight"]
    path = tmp_path / "truncated.safetensors"
    save_file(weights, path)
    with pytest.raises(EngineError, match=re.escape(str(path))) as err:
        load_vae(path, config_dir, torch.float32)
    assert "decoder.up_blocks.1.resnets.0.conv_shortcut.weight" in str(err.value)


def test_file_that_is_not_safetensors_is_refused(config_dir, tmp_path):
    path = tmp_path / "wan_2.1_vae.safetensors"
    path.write_bytes(b"<html>not found</html>")
    with pytest.raises(EngineError, match=re.escape(str(path))):
        load_vae(path, config_dir, torch.float32)


def test_packaged_config_layout_round_trips():
    """Every weight of the packaged (full-size) VAE config has an original name that diffusers maps back,
    so the real file's layout is the one these names describe."""
    from diffusers import AutoencoderKLWan
    from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

    config = AutoencoderKLWan.load_config(str(wan22_config_dir()), subfolder="vae")
    with torch.device("meta"):
        model = AutoencoderKLWan.from_config(config)
    names = list(model.state_dict())
    wan_names = {to_wan_name(k): k for k in names}
    assert len(wan_names) == len(names)
    assert {k: v for k, v in convert_wan_vae_to_diffusers({w: d for w, d in wan_names.items()}).items() if k != v} == {}
