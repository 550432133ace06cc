"""Save the live previews of a story as one contact sheet: a row per denoising step, segments one after another.

    python examples/preview_sheet.py examples/chelsea.jpg "walk | run" previews.jpg [--preset tiny]

Each row is the strip the bots show on a job's status message after that step (`engine/preview.py`:
the sampler's predicted clean latent through the Wan 2.1 latent-to-RGB factors, no VAE decode). On the
`tiny` preset the weights are random, so the strips show the photo's latent dissolving into noise-like
colour rather than a story; on a real preset they show the motion taking shape.
"""
from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.models.config import EngineConfig  # noqa: E402
from engine.models.loading import load_models  # noqa: E402
from engine.models.presets import get_preset  # noqa: E402
from engine.svi import generate_story  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("photo", type=Path)
    ap.add_argument("story", help='prompts separated by "|"')
    ap.add_argument("out", type=Path)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--models-dir", type=Path, default=Path("svibot-data/models"))
    args = ap.parse_args()
    models = load_models(EngineConfig(preset=args.preset, models_dir=args.models_dir))
    prompts = [p.strip() for p in args.story.split("|") if p.strip()]
    settings = get_preset(args.preset).settings
    rows: list[tuple[str, Image.Image]] = []

    def on_progress(p) -> None:
        if p.preview is not None:
            label = f"segment {p.segment + 1}/{p.num_segments}, step {p.step}/{p.num_steps}"
            rows.append((label, Image.open(io.BytesIO(p.preview())).convert("RGB")))

    generate_story(models, args.photo, prompts, settings, on_progress=on_progress, previews=True)
    label_w, pad = 200, 4
    width = label_w + max(im.width for _, im in rows)
    sheet = Image.new("RGB", (width, sum(im.height + pad for _, im in rows)), "white")
    draw, y = ImageDraw.Draw(sheet), 0
    for label, im in rows:
        draw.text((6, y + im.height // 2 - 6), label, fill="black")
        sheet.paste(im, (label_w, y))
        y += im.height + pad
    sheet.save(args.out, quality=90)
    print(f"{len(rows)} previews ({rows[0][1].width}x{rows[0][1].height} each) -> {args.out}")


if __name__ == "__main__":
    main()
