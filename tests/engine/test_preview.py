"""Live previews: the x0 prediction, the Wan 2.1 latent->RGB projection, and the worker's preview events
on the tiny preset."""
from __future__ import annotations

import asyncio
import base64
import io

import torch
from PIL import Image

import engine.svi as svi
from engine.preview import PREVIEW_HEIGHT, latent_to_rgb, predicted_x0, preview_strip
from engine.worker import PREVIEW_KEY, Worker
from storage import Limits
from tests.engine.test_worker import make_config, open_queue, story_job


def test_x0_from_velocity_inverts_flow_matching():
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(16, 3, 4, 4, generator=g), torch.randn(16, 3, 4, 4, generator=g)
    sigma = 0.7
    x_t = (1 - sigma) * x0 + sigma * noise  # the flow-matching forward process
    assert torch.allclose(predicted_x0(x_t, noise - x0, sigma), x0, atol=1e-6)


def test_projection_pins_comfyui_wan21_numbers():
    # comfy/latent_formats.py class Wan21: bias (-0.1835, -0.0868, -0.3360); a zero latent shows the bias
    zero = latent_to_rgb(torch.zeros(16, 1, 2, 2))
    assert zero[0, 0, 0].tolist() == [104, 116, 85]  # round((b + 1) * 127.5)
    one_hot = torch.zeros(16, 1, 1, 1)
    one_hot[2] = 1.0  # row 2: (0.3568, 0.2548, 0.1747)
    assert latent_to_rgb(one_hot)[0, 0, 0].tolist() == [round((0.3568 - 0.1835 + 1) * 127.5),
                                                        round((0.2548 - 0.0868 + 1) * 127.5),
                                                        round((0.1747 - 0.3360 + 1) * 127.5)]
    assert latent_to_rgb(torch.full((16, 1, 1, 1), 50.0)).max() == 255  # clamped, never wraps


def test_strip_shows_four_frames_side_by_side():
    strip = preview_strip(torch.randn(16, 21, 6, 10))
    assert strip.size == (4 * 160, PREVIEW_HEIGHT)
    assert preview_strip(torch.randn(16, 2, 6, 10)).size == (2 * 160, PREVIEW_HEIGHT)  # fewer frames than 4


async def _progress(tmp_path, previews: bool) -> list[dict]:
    cfg = make_config(tmp_path / "d")
    from dataclasses import replace
    cfg = replace(cfg, previews=previews)
    queue = await open_queue(cfg)
    job = await queue.enqueue(story_job(["walk", "run"]), Limits())
    await Worker(queue, cfg).run(asyncio.Event(), once=True)
    assert (await queue.get_job(job.id)).state == "done"
    events = [e.payload for e in await queue.events_for_job(job.id) if e.kind == "progress"]
    await queue.close()
    return events


async def test_worker_sends_one_preview_per_step_event_on_the_tiny_preset(tmp_path):
    events = await _progress(tmp_path, previews=True)
    assert [(e["segment"], e["step"]) for e in events] == [(k, s) for k in (0, 1) for s in (1, 2, 3, 4)]
    images = [Image.open(io.BytesIO(base64.b64decode(e[PREVIEW_KEY]))) for e in events]
    assert all(im.format == "JPEG" and im.height == PREVIEW_HEIGHT and im.width >= 2 * PREVIEW_HEIGHT for im in images)
    pixels = [im.tobytes() for im in images]
    assert all(a != b for a, b in zip(pixels, pixels[1:]))  # the prediction changes from step to step
    assert max(len(e[PREVIEW_KEY]) for e in events) < 60_000  # small enough to ride in an event
    print(f"preview strip {images[0].size}, {len(base64.b64decode(events[0][PREVIEW_KEY]))} bytes")


async def test_previews_off_render_nothing(tmp_path, monkeypatch):
    def boom(_x0):
        raise AssertionError("a preview was rendered with previews off")

    monkeypatch.setattr(svi, "preview_jpeg", boom)
    events = await _progress(tmp_path, previews=False)
    assert len(events) == 8 and not any(PREVIEW_KEY in e for e in events)
