"""The Colab host notebook: valid, thin, honest, and it runs a `tiny` story headlessly on the CPU."""
from __future__ import annotations

import ast
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import imageio_ffmpeg
import nbformat
import pytest
from nbclient import NotebookClient

from engine.models.presets import GB, PRESETS

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "colab_host.ipynb"
MAX_CELL_LINES = 15
FORM_FIELD = re.compile(r"^(?P<name>[A-Z_]+) = (?P<value>.+?)\s+#@param\b(?P<spec>.*)$")


def read_notebook() -> nbformat.NotebookNode:
    return nbformat.read(NOTEBOOK, as_version=4)


def code_cells(nb: nbformat.NotebookNode) -> list[str]:
    return [c.source for c in nb.cells if c.cell_type == "code"]


def form_fields(nb: nbformat.NotebookNode) -> dict[str, tuple[str, str]]:
    """Every Colab form field: name -> (literal value, the #@param spec)."""
    fields = {}
    for source in code_cells(nb):
        for line in source.splitlines():
            if m := FORM_FIELD.match(line):
                assert m["name"] not in fields, f"form field {m['name']} is defined twice"
                fields[m["name"]] = (m["value"], m["spec"].strip())
    return fields


def set_form_fields(nb: nbformat.NotebookNode, **values) -> None:
    """Fill in form fields the way Colab's form UI does: by rewriting the literal in the cell."""
    missing = set(values) - set(form_fields(nb))
    assert not missing, f"no form fields named {sorted(missing)}"
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        lines = []
        for line in cell.source.splitlines():
            m = FORM_FIELD.match(line)
            if m and m["name"] in values:
                line = f"{m['name']} = {values[m['name']]!r}  #@param{m['spec']}"
            lines.append(line)
        cell.source = "\n".join(lines)


# -- structure -------------------------------------------------------------------------------
def test_notebook_is_valid_and_targets_a_gpu_runtime():
    nb = read_notebook()
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.name == "python3"
    assert nb.metadata.get("accelerator") == "GPU"
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "commit it without outputs"
    for source in code_cells(nb):
        ast.parse(source)


def test_code_cells_are_short_and_hold_no_engine_logic():
    for source in code_cells(read_notebook()):
        lines = [line for line in source.splitlines() if line.strip()]
        assert len(lines) <= MAX_CELL_LINES, f"{len(lines)} lines (limit {MAX_CELL_LINES}):\n{source}"
        for banned in ("import torch", "diffusers", "transformers", "import gguf", "import sqlite3", "JobQueue"):
            assert banned not in source, f"{banned!r} in a notebook cell:\n{source}"
        # The engine is only called through `svibot`; the notebook reads the preset size table and the
        # packaged sample photo, nothing else.
        assert set(re.findall(r"\bengine\.([\w.]+)", source)) <= {"models.presets"}, source
        for names in re.findall(r"from engine\.models\.presets import ([\w, ]+)", source):
            assert {n.strip() for n in names.split(",")} <= {"GB", "PRESETS"}, source
        assert set(re.findall(r"\bfrom storage\.(\w+)", source)) <= {"backup"}, source


def test_colab_only_calls_are_guarded():
    for source in code_cells(read_notebook()):
        if re.search(r"from google\.colab import|google\.colab\.", source):
            assert "IN_COLAB" in source, f"a Colab-only call without an IN_COLAB guard:\n{source}"
    setup = code_cells(read_notebook())[0]
    assert "import google.colab" in setup and "except ImportError" in setup


def test_preset_dropdown_lists_every_preset_with_its_package_size():
    value, spec = form_fields(read_notebook())["PRESET"]
    options = ast.literal_eval(spec)
    assert ast.literal_eval(value) in options
    assert ast.literal_eval(value).startswith("q4_k_m")
    assert {o.split()[0] for o in options} == set(PRESETS)
    for option in options:
        preset = PRESETS[option.split()[0]]
        if not preset.is_random_weights:
            assert f"({preset.total_bytes / GB:.1f} GB download" in option, option


def test_notebook_sets_memory_env_and_never_runs_two_servers():
    sources = "\n".join(code_cells(read_notebook()))
    assert 'os.environ["PYTORCH_CUDA_ALLOC_CONF"] = "expandable_segments:True"' in sources
    start = next(s for s in code_cells(read_notebook()) if '"serve"' in s)
    assert start.index("stop_server()") < start.index("subprocess.Popen")
    assert "start_new_session=True" in start
    story = next(s for s in code_cells(read_notebook()) if '"story"' in s)
    assert "server_pid()" in story


def test_worker_only_mode_keeps_the_database_url_off_the_command_line():
    cell = next(s for s in code_cells(read_notebook()) if '"worker"' in s)
    assert 'os.environ["SVIBOT_DATABASE_URL"] = secret("SVIBOT_DATABASE_URL")' in cell
    assert "--database-url" not in cell  # a command line is visible to every process on the runtime
    assert cell.index("stop_server()") < cell.index("subprocess.Popen") and "start_new_session=True" in cell


def test_notebook_states_colab_limits_and_responsible_use():
    text = "\n".join(c.source for c in read_notebook().cells if c.cell_type == "markdown").lower()
    for phrase in ("disconnects when it sits idle", "usage", "snapshot", "right to use",
                   "no sexual content involving real people", "impersonation of real people",
                   "allowlist", "t4 gpu"):
        assert phrase in text, phrase


def test_set_form_fields_rejects_unknown_names():
    with pytest.raises(AssertionError, match="NOT_A_FIELD"):
        set_form_fields(read_notebook(), NOT_A_FIELD=1)


# -- helper cells, run in-process --------------------------------------------------------------
def run_cells(*titles: str, **names) -> dict:
    """Execute the setup cell, then the cells whose `#@title` starts with each of `titles`."""
    cells = code_cells(read_notebook())
    namespace = dict(names)
    exec(cells[0], namespace)  # imports and IN_COLAB
    for title in titles:
        source = next(c for c in cells if c.startswith(f"#@title {title}"))
        exec(source, namespace)
    return namespace


def test_run_helper_streams_lines_keeps_carriage_returns_and_raises_on_failure(capsys):
    ns = run_cells("Helper: `run(cmd)`")
    lines = []
    script = "import sys; sys.stderr.write('10%\\r50%\\r100%\\n'); print('segment 1/1: a.mp4'); print('story: b.mp4')"
    ns["run"]([sys.executable, "-c", script], on_line=lines.append)
    assert lines == ["segment 1/1: a.mp4\n", "story: b.mp4\n"]
    assert "10%\r50%\r100%" in capsys.readouterr().err  # progress bars redraw in place
    with pytest.raises(RuntimeError, match="exit code 3"):
        ns["run"]([sys.executable, "-c", "raise SystemExit(3)"])


def test_stop_server_ends_only_a_svibot_server_and_its_group(tmp_path):
    ns = run_cells("Helper: at most one background", DATA_DIR=str(tmp_path))
    assert ns["server_pid"]() is None
    other = subprocess.Popen(["sleep", "60"])
    try:
        (tmp_path / "serve.pid").write_text(str(other.pid))  # not a svibot process: left alone
        assert ns["server_pid"]() is None
    finally:
        other.kill()
    server = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "svibot", "serve"],
                              start_new_session=True)
    (tmp_path / "serve.pid").write_text(str(server.pid))
    try:
        for _ in range(100):  # /proc/PID/cmdline reads empty until the exec has settled
            if ns["server_pid"]() is not None:
                break
            time.sleep(0.05)
        assert ns["server_pid"]() == server.pid
        ns["stop_server"](wait_s=10)
        assert server.wait(timeout=5) == -signal.SIGTERM
        assert not (tmp_path / "serve.pid").exists()
    finally:
        server.kill()


def test_preset_table_says_what_fits_a_t4_and_a_cpu_runtime(capsys):
    run_cells("Which presets fit", GPU_NAME="Tesla T4", VRAM_GIB=15.0, RAM_GIB=12.7, PRESET="q4_k_m")
    rows = {line.lstrip("-> ").split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert set(rows) == set(PRESETS)
    assert rows["q4_k_m"].startswith("->") and rows["q4_k_m"].endswith("fits")
    assert rows["q3_k_m"].endswith("fits") and rows["q8_0"].endswith("too big here")
    assert rows["tiny"].endswith("(random weights)")
    run_cells("Which presets fit", GPU_NAME=None, VRAM_GIB=0.0, RAM_GIB=64.0, PRESET="tiny")
    assert all(line.endswith(("too big here", "(random weights)")) for line in capsys.readouterr().out.splitlines())


# -- headless run ------------------------------------------------------------------------------
def svibot_shim(bin_dir: Path) -> None:
    """`svibot` on PATH for the kernel, running this checkout's CLI (as `pip install` would)."""
    bin_dir.mkdir()
    shim = bin_dir / "svibot"
    shim.write_text(f"#!{sys.executable}\nimport sys\nfrom svibot.cli import main\nsys.exit(main())\n")
    shim.chmod(0o755)


def stream_text(cell, name: str = "stdout") -> str:
    return "".join(out.text for out in cell.get("outputs", []) if out.output_type == "stream" and out.name == name)


def videos_shown(cell) -> int:
    return sum("<video" in out.get("data", {}).get("text/html", "") for out in cell.get("outputs", []))


def test_runs_headless_on_cpu_with_the_tiny_preset(tmp_path, monkeypatch):
    svibot_shim(tmp_path / "bin")
    monkeypatch.setenv("PATH", os.pathsep.join([str(tmp_path / "bin"), str(Path(sys.executable).parent),
                                                os.environ["PATH"]]))
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("SVIBOT_DEVICE", "cpu")
    for name in ("HF_TOKEN", "SVIBOT_PRESET", "SVIBOT_DATA_DIR", "TELEGRAM_BOT_TOKEN", "DISCORD_BOT_TOKEN"):
        monkeypatch.delenv(name, raising=False)

    nb = read_notebook()
    data_dir = tmp_path / "data"
    set_form_fields(nb, PRESET="tiny (random weights, CPU test, no download)", INSTALL_FROM="already installed",
                    DATA_DIR=str(data_dir), STORY="walk | run", SEED=3, LOOP=True,
                    COLOR_MATCH="anchor (later segments keep the photo's colours)")
    NotebookClient(nb, kernel_name="python3", timeout=120,
                   resources={"metadata": {"path": str(tmp_path)}}).execute()

    story_cell = next(c for c in nb.cells if c.cell_type == "code" and '"story"' in c.source)
    text = stream_text(story_cell)
    assert "segment 1/2:" in text and "segment 2/2:" in text, text
    assert videos_shown(story_cell) == 3, "each segment, then the stitched story, is shown inline"
    final = Path(re.search(r"^story: (.+)$", text, re.M)[1].strip())
    assert final.is_file() and final.is_relative_to(data_dir)
    frames, _ = imageio_ffmpeg.count_frames_and_secs(str(final))
    assert frames == 13 + (13 - 5) - 4  # tiny's 13 frames; the loop drops the 4 that repeat the first frame

    everything = "\n".join(stream_text(c) for c in nb.cells if c.cell_type == "code")
    assert "GPU: none" in everything and "WARNING: no GPU" in everything
    assert "-> tiny" in everything  # the size table marks the chosen preset
    assert "Bot mode is off" in everything and "bot stopped" in everything
    assert "Worker-only mode is off." in everything
    photo_cell = next(c for c in nb.cells if c.cell_type == "code" and "chelsea.jpg" in c.source)
    assert any("image/jpeg" in out.get("data", {}) for out in photo_cell.outputs)
