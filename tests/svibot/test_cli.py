"""`svibot jobs`, `--help` and config building through the real entry point."""
from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from engine.config import RECIPES
from svibot.config import build_config
from svibot.cli import build_parser, main
from storage import DataDir, JobQueue, Limits, NewJob, QueueConfig, WorkerId
from storage.errors import BadSetting

PHOTO = Path(__file__).resolve().parents[2] / "examples" / "chelsea.jpg"


def test_help_lists_subcommands(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for command in ("story", "worker", "serve", "download", "jobs"):
        assert command in out


async def _seed(root: Path) -> list[int]:
    data = DataDir(root)
    q = await JobQueue.open(QueueConfig(db_path=data.db_path), data.photos)
    photo = PHOTO.read_bytes()
    a = await q.enqueue(NewJob("telegram", "c", "u", photo, ["walk", "run 🐈"], {"seed": 1}), Limits())
    b = await q.enqueue(NewJob("cli", "c", "u", photo, ["fly"], {"seed": 2}), Limits())
    w = WorkerId.current()
    await q.claim(w)
    await q.record_segment(a.id, w, index=0, prompt="walk", video_path=root / "a0.mp4", carry_path=root / "a0.pt",
                           num_frames=81, duration_s=5.06, gen_seconds=30.0)
    await q.close()
    return [a.id, b.id]


def test_jobs_list_show_cancel_json(tmp_path, capsys):
    root = tmp_path / "data"
    a, b = asyncio.run(_seed(root))
    assert main(["--data-dir", str(root), "jobs", "list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["id"]: r["state"] for r in rows} == {a: "running", b: "queued"}
    assert main(["--data-dir", str(root), "jobs", "show", str(a), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["prompts"] == ["walk", "run 🐈"] and shown["attempts"] == 0 and shown["error"] is None
    assert shown["segments"] == [{"index": 0, "video_path": str(root / "a0.mp4"), "carry_path": str(root / "a0.pt"),
                                  "num_frames": 81, "duration_s": 5.06, "gen_seconds": 30.0}]
    assert main(["--data-dir", str(root), "jobs", "cancel", str(b)]) == 0
    assert "cancelled" in capsys.readouterr().out
    assert main(["--data-dir", str(root), "jobs", "list"]) == 0
    text = capsys.readouterr().out
    assert f"#{b:<5} cancelled" in text and "1/2 segments" in text


def test_jobs_on_fresh_data_dir_and_bad_db(tmp_path, capsys):
    assert main(["--data-dir", str(tmp_path / "new"), "jobs", "list"]) == 0
    assert "no jobs" in capsys.readouterr().out
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "queue.sqlite3").write_text("not a database at all")
    assert main(["--data-dir", str(bad), "jobs", "list"]) == 1
    assert "not an SQLite database" in capsys.readouterr().err
    assert (bad / "queue.sqlite3").read_text() == "not a database at all"
    assert main(["--data-dir", str(tmp_path / "new"), "jobs", "show"]) == 2


def test_config_flags_win_over_env(tmp_path):
    args = build_parser().parse_args(["--data-dir", str(tmp_path), "worker", "--preset", "tiny",
                                      "--vram-budget", "15", "--model-file", "high_repo=me/wan"])
    env = {"SVIBOT_PRESET": "q8_0", "SVIBOT_VRAM_BUDGET": "7", "SVIBOT_RAM_BUDGET": "11",
           "SVIBOT_MAX_SEGMENTS": "4", "SVIBOT_MODEL_FILES": "low_repo=you/wan"}
    cfg = build_config(args, env)
    assert cfg.engine.preset == "tiny" and cfg.engine.vram_budget_gib == 15.0 and cfg.engine.ram_budget_gib == 11.0
    assert cfg.limits.max_segments == 4
    assert dict(cfg.engine.file_overrides) == {"low_repo": "you/wan", "high_repo": "me/wan"}
    assert cfg.data_dir.db_path == tmp_path / "queue.sqlite3"
    with pytest.raises(BadSetting, match="SVIBOT_MAX_SEGMENTS must be a whole number but is 'ten'"):
        build_config(args, {"SVIBOT_MAX_SEGMENTS": "ten"})
    with pytest.raises(BadSetting, match="KEY=VALUE"):
        build_config(build_parser().parse_args(["worker", "--model-file", "oops"]), {})


def test_recipe_overrides_from_env_and_flags(tmp_path):
    args = build_parser().parse_args(["--data-dir", str(tmp_path), "worker", "--preset", "tiny",
                                      "--recipe", "fast:guidance_low=1.0,lightx2v_high=1.0",
                                      "--recipe", "quality:guidance=4"])
    env = {"SVIBOT_RECIPE_FAST": "steps=6, guidance=1.5"}
    recipes = build_config(args, env).worker.recipes
    fast, quality = recipes["fast"], recipes["quality"]
    # the environment first, then each flag: SVI 2.0's 6 steps with guidance on the high expert only
    assert (fast.num_inference_steps, fast.guidance_high, fast.guidance_low) == (6, 1.5, 1.0)
    assert (fast.lightx2v_high, fast.lightx2v_low, fast.boundary_ratio) == (1.0, 1.0, 0.875)
    assert (quality.num_inference_steps, quality.guidance_high, quality.guidance_low) == (50, 4.0, 4.0)
    assert (quality.lightx2v_high, quality.lightx2v_low) == (0.0, 0.0)  # overrides are per recipe
    assert build_config(build_parser().parse_args(["worker"]), {}).worker.recipes == RECIPES


@pytest.mark.parametrize("flags, env, message", [
    (["--recipe", "ultra:steps=6"], {}, "NAME one of ['fast', 'quality']"),
    (["--recipe", "fast"], {}, "--recipe must look like NAME:KEY=VALUE"),
    (["--recipe", "fast:cfg=2"], {}, "'cfg=2' must be KEY=VALUE with KEY one of"),
    (["--recipe", "fast:steps=six"], {}, "steps must be an integer but is 'six'"),
    ([], {"SVIBOT_RECIPE_QUALITY": "guidance=0.5"}, "guidance_high must be in [1, 20] but is 0.5"),
    ([], {"SVIBOT_RECIPE_FAST": "lightx2v_low=9"}, "lightx2v_low must be in [0, 4] but is 9.0"),
])
def test_bad_recipe_overrides_name_the_value(tmp_path, flags, env, message):
    args = build_parser().parse_args(["--data-dir", str(tmp_path), "worker", *flags])
    with pytest.raises(BadSetting) as err:
        build_config(args, env)
    assert message in str(err.value)


def test_download_suggests_the_largest_preset_that_fits(tmp_path, capsys):
    args = ["--data-dir", str(tmp_path), "download", "--dry-run", "--preset", "q4_k_m",
            "--vram-budget", "15", "--ram-budget", "11"]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "preset q4_k_m: both experts with their LoRAs hold" in err
    assert "the largest preset that fits is q3_k_m (--preset q3_k_m)" in err
    assert main(args[:5] + ["q3_k_m", "--vram-budget", "15", "--ram-budget", "11"]) == 0
    assert "it fits 15.0 GiB VRAM + 11.0 GiB RAM with no disk reads" in capsys.readouterr().err


def test_fast_path_settings_come_from_the_environment(tmp_path):
    args = build_parser().parse_args(["--data-dir", str(tmp_path), "worker", "--preset", "tiny"])
    engine = build_config(args, {}).engine
    assert (engine.attention, engine.compile, engine.weights) == ("auto", "auto", "auto")
    env = {"SVIBOT_ATTENTION": "SDPA-Flash", "SVIBOT_COMPILE": "off", "SVIBOT_WEIGHTS": "gguf"}
    engine = build_config(args, env).engine
    assert (engine.attention, engine.compile, engine.weights) == ("sdpa-flash", "off", "gguf")
    with pytest.raises(BadSetting, match="SVIBOT_WEIGHTS must be one of auto, gguf, fp8 but is 'int4'"):
        build_config(args, {"SVIBOT_WEIGHTS": "int4"})
    with pytest.raises(BadSetting, match="SVIBOT_ATTENTION must be one of auto, sdpa, .* but is 'xformers'"):
        build_config(args, {"SVIBOT_ATTENTION": "xformers"})


def test_help_and_version_do_not_import_torch():
    # torch takes seconds to import; `svibot --help` must not wait for it.
    import subprocess
    import sys

    code = ("import sys\nfrom svibot.cli import main\nfor argv in (['--help'], ['story', '--help'], ['--version']):\n"
            "    try:\n        main(argv)\n    except SystemExit as e:\n        assert e.code == 0, e.code\n"
            "heavy = sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules)\n"
            "print('HEAVY', heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.returncode == 0, out.stderr
    assert "HEAVY []" in out.stdout and "svibot 0.1.0" in out.stdout


def test_version_matches_the_package(capsys):
    from svibot import __version__

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"svibot {__version__}"


def test_bad_log_level_is_a_clear_usage_error(capsys, monkeypatch):
    with pytest.raises(SystemExit) as exit_:
        main(["--log-level", "loud", "jobs"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "'loud' is not a log level; use one of DEBUG, INFO, WARNING" in err
    assert "Traceback" not in err
    monkeypatch.setenv("SVIBOT_LOG_LEVEL", "verbose")
    with pytest.raises(SystemExit):
        main(["jobs"])
    assert "'verbose' is not a log level" in capsys.readouterr().err
    assert build_parser().parse_args(["--log-level", "debug", "jobs"]).log_level == "DEBUG"
