"""The Colab host notebook: valid, thin, honest, and it runs a `tiny` story headlessly on the CPU."""
from __future__ import annotations

import ast
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import imageio_ffmpeg
import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

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
    assert ast.literal_eval(value).startswith("auto")  # svibot picks what fits the runtime
    assert {o.split()[0] for o in options} == set(PRESETS) | {"auto"}
    for option in options:
        preset = PRESETS.get(option.split()[0])
        if preset and not preset.is_random_weights:
            assert f"({preset.total_bytes / GB:.1f} GB download" in option, option


def test_notebook_sets_memory_env_and_keeps_one_warm_worker():
    cells = code_cells(read_notebook())
    sources = "\n".join(cells)
    assert 'os.environ["PYTORCH_CUDA_ALLOC_CONF"] = "expandable_segments:True"' in sources
    helper = next(s for s in cells if "def start_background" in s)
    assert helper.index("stop_background()") < helper.index("subprocess.Popen")
    assert "start_new_session=True" in helper
    story = next(s for s in cells if '"story"' in s)
    assert '"--no-worker"' in story and "watch=worker_gone" in story  # it follows the warm worker's job
    start = next(s for s in cells if s.startswith("#@title Start the warm worker"))
    assert '"worker"' in start and '"serve"' in start


def test_worker_only_mode_keeps_the_database_url_off_the_command_line_and_off_the_disk():
    cells = code_cells(read_notebook())
    ask = next(s for s in cells if "WORKER_ONLY = False" in s)
    assert 'os.environ["SVIBOT_DATABASE_URL"] = secret("SVIBOT_DATABASE_URL")' in ask
    assert not any("--database-url" in s for s in cells)  # a command line is visible to every process on the runtime
    helper = next(s for s in cells if "def start_background" in s)
    assert "sha256" in helper  # the restart check stores a digest of the environment, not the URL


@pytest.mark.parametrize("worker_only", [False, True])
def test_start_background_restarts_only_when_the_command_or_its_environment_changes(tmp_path, monkeypatch, worker_only):
    ns = run_cells("Helper: at most one background", "Helper: `start_background", DATA_DIR=str(tmp_path))
    cmd = [sys.executable, "-c", "import time; time.sleep(60)", "svibot", "worker"]
    monkeypatch.setenv("SVIBOT_DATABASE_URL", "postgresql://svibot:hunter2@db.example/svibot")
    try:
        ns["start_background"](cmd)
        first = ns["BACKGROUND"]
        ns["start_background"](cmd)  # the same command: the warm worker is kept
        assert ns["BACKGROUND"] is first and first.poll() is None
        assert "hunter2" not in (tmp_path / "worker.cmd").read_text()
        if worker_only:
            monkeypatch.setenv("SVIBOT_DATABASE_URL", "postgresql://svibot:other@db.example/svibot")
        else:
            monkeypatch.setenv("SVIBOT_ALLOWED_USERS", "4242")
        ns["start_background"](cmd)  # another queue or allowlist: a new process
        assert ns["BACKGROUND"] is not first and first.wait(timeout=30) == -signal.SIGTERM
    finally:
        ns["stop_background"](wait_s=10)


def test_every_input_comes_before_the_first_long_step():
    """Uploads, the Drive sign-in and token prompts all happen before the runtime check, install and download."""
    cells = code_cells(read_notebook())
    first_run = next(i for i, s in enumerate(cells) if s.startswith("#@title Runtime check"))
    asking = [i for i, s in enumerate(cells) if re.search(r"files\.upload\(|drive\.mount\(|secret\((?![^)]*ask=False)", s)
              and not s.startswith("#@title Helper")]
    assert asking and max(asking) < first_run, asking
    fields = [i for i, s in enumerate(cells) for line in s.splitlines() if FORM_FIELD.match(line)]
    assert [i for i in fields if i > first_run] == [cells.index(next(s for s in cells if "STOP = False" in s))]


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
def run_cells(*titles: str, fields: dict | None = None, **names) -> dict:
    """Execute the setup cell, then the cells whose `#@title` starts with each of `titles`."""
    nb = read_notebook()
    if fields:
        set_form_fields(nb, **fields)
    cells = code_cells(nb)
    namespace = dict(names)
    exec(cells[0], namespace)  # imports and IN_COLAB
    for title in titles:
        source = next(c for c in cells if c.startswith(f"#@title {title}"))
        exec(source, namespace)
    return namespace


HELPERS = ("Helper: `explain", "Helper: `start(cmd)`", "Helper: `run(cmd)`")


def test_run_helper_streams_lines_keeps_carriage_returns_and_names_a_failing_command_whole(capsys):
    ns = run_cells(*HELPERS)
    lines = []
    script = "import sys; sys.stderr.write('10%\\r50%\\r100%\\n'); print('segment 1/1: a.mp4'); print('story: b.mp4')"
    ns["run"]([sys.executable, "-c", script], on_line=lines.append)
    assert lines == ["segment 1/1: a.mp4\n", "story: b.mp4\n"]
    assert "10%\r50%\r100%" in capsys.readouterr().err  # progress bars redraw in place
    cmd = [sys.executable, "-m", "pip", "install", "-q", "svibot @ git+https://example.invalid/x"]
    with pytest.raises(ns["Stop"]) as err:
        ns["run"]([sys.executable, "-c", "raise SystemExit(3)", *cmd[1:]])
    assert str(err.value) == (f"`{sys.executable} -c 'raise SystemExit(3)' -m pip install -q "
                              "'svibot @ git+https://example.invalid/x'` failed with exit code 3; its output is above.")


def test_a_killed_command_is_explained_as_out_of_ram():
    ns = run_cells(*HELPERS)
    with pytest.raises(ns["Stop"], match=r"was killed \(exit code -9\): the runtime ran out of RAM\. Choose a smaller preset"):
        ns["run"]([sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"])


def test_stopping_a_cell_stops_its_command(tmp_path):
    """A stopped story cell sends SIGTERM to `svibot story --no-worker`, which cancels its job."""
    ns = run_cells(*HELPERS)
    marker = tmp_path / "got-sigterm"
    script = (f"import signal, sys, time\nsignal.signal(signal.SIGTERM, lambda *a: (open({str(marker)!r}, 'w').close(), "
              "sys.exit(130)))\nprint('segment 1/3: x.mp4', flush=True)\ntime.sleep(60)")

    def interrupt(line):
        raise KeyboardInterrupt  # what Colab's stop button raises in the cell

    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        ns["run"]([sys.executable, "-c", script], on_line=interrupt)
    assert marker.exists() and time.monotonic() - started < 30


def test_run_gives_up_when_the_worker_dies():
    ns = run_cells(*HELPERS)
    calls = []
    with pytest.raises(ns["Stop"], match="worker is gone"):
        ns["run"]([sys.executable, "-c", "import time; time.sleep(60)"],
                  watch=lambda: calls.append(1) or ("worker is gone" if len(calls) > 1 else None))


def test_stop_background_ends_only_a_svibot_process_and_its_group(tmp_path):
    ns = run_cells("Helper: at most one background", DATA_DIR=str(tmp_path))
    assert ns["background_pid"]() is None
    other = subprocess.Popen(["sleep", "60"])
    try:
        (tmp_path / "worker.pid").write_text(str(other.pid))  # not a svibot process: left alone
        assert ns["background_pid"]() is None
    finally:
        other.kill()
    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "svibot", "worker"],
                              start_new_session=True)
    (tmp_path / "worker.pid").write_text(str(worker.pid))
    try:
        for _ in range(100):  # /proc/PID/cmdline reads empty until the exec has settled
            if ns["background_pid"]() is not None:
                break
            time.sleep(0.05)
        assert ns["background_pid"]() == worker.pid
        ns["stop_background"](wait_s=10)
        assert worker.wait(timeout=5) == -signal.SIGTERM
        assert not (tmp_path / "worker.pid").exists()
    finally:
        worker.kill()


def test_worker_gone_explains_an_out_of_memory_kill(tmp_path):
    ns = run_cells(*HELPERS, "Helper: at most one background", "Helper: `worker_gone", DATA_DIR=str(tmp_path))
    (tmp_path / "worker.log").write_text("loading preset Wan 2.2 I2V A14B Q8_0 on cuda in float16\n")
    proc = subprocess.Popen([sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"])
    proc.wait()
    ns["BACKGROUND"] = proc
    why = ns["worker_gone"]()
    assert "was killed (exit code -9): the runtime ran out of RAM" in why and "loading preset" in why


@pytest.mark.parametrize("fields, allowed, admins, note", [
    ({"OPERATOR_ID": "4242"}, "4242", "4242", False),
    ({"OPERATOR_ID": "4242", "MORE_USERS": " 7, 8 "}, "4242,7,8", "4242", False),
    ({}, "nobody-yet", "", True),  # locked until the operator knows their id (/whoami tells them)
    ({"PUBLIC_BOT": True}, "", "", False),
])
def test_bot_mode_fills_the_allowlist_and_admins_with_the_operator(monkeypatch, capsys, fields, allowed, admins, note):
    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", "1:from-the-environment")
    for name in ("SVIBOT_ALLOWED_USERS", "SVIBOT_ADMINS"):
        monkeypatch.delenv(name, raising=False)
    ns = run_cells("Helper: secrets", "1.5 Bot mode", fields={"START_BOT": True, **fields})
    assert (os.environ["SVIBOT_ALLOWED_USERS"], os.environ["SVIBOT_ADMINS"]) == (allowed, admins)
    assert ns["BOT_FLAGS"] == ["--telegram"]
    assert ("Send it /whoami" in capsys.readouterr().out) == note


def test_auto_preset_is_resolved_once_by_svibot_itself(tmp_path, monkeypatch, capsys):
    """`auto` becomes the engine's own default for this machine (here, without CUDA: `tiny`)."""
    svibot_shim(tmp_path / "bin")
    monkeypatch.setenv("PATH", os.pathsep.join([str(tmp_path / "bin"), os.environ["PATH"]]))
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    monkeypatch.setenv("SVIBOT_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("SVIBOT_PRESET", raising=False)
    ns = run_cells(*HELPERS, "Which preset", PRESET="auto")
    assert ns["PRESET"] == "tiny"
    rows = {line.lstrip("-> ").split()[0]: line for line in capsys.readouterr().out.splitlines() if "GB download" in line}
    assert set(rows) == set(PRESETS) and rows["tiny"].startswith("->")
    assert rows["q3_k_m"].endswith(f"{PRESETS['q3_k_m'].total_bytes / GB:5.1f} GB download")


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


@pytest.fixture
def headless(tmp_path, monkeypatch):
    """Run the notebook as Colab's Run all would, on this CPU, with `svibot` on PATH; stops its worker after."""
    svibot_shim(tmp_path / "bin")
    monkeypatch.setenv("PATH", os.pathsep.join([str(tmp_path / "bin"), str(Path(sys.executable).parent),
                                                os.environ["PATH"]]))
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("SVIBOT_DEVICE", "cpu")
    for name in ("HF_TOKEN", "SVIBOT_PRESET", "SVIBOT_DATA_DIR", "TELEGRAM_BOT_TOKEN", "DISCORD_BOT_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    data_dir = tmp_path / "data"

    def execute(**fields) -> nbformat.NotebookNode:
        nb = read_notebook()
        set_form_fields(nb, **{"DATA_DIR": str(data_dir), **fields})
        client = NotebookClient(nb, kernel_name="python3", timeout=180,
                                resources={"metadata": {"path": str(tmp_path)}})
        try:
            client.execute()
        except CellExecutionError as err:
            nb.metadata["error"] = str(err)
        return nb

    yield execute, data_dir
    try:
        os.killpg(int((data_dir / "worker.pid").read_text()), signal.SIGTERM)
    except (OSError, ValueError):
        pass


def cell_titled(nb: nbformat.NotebookNode, title: str):
    return next(c for c in nb.cells if c.cell_type == "code" and c.source.startswith(f"#@title {title}"))


TINY = "tiny (random weights, CPU test, no download)"


def test_runs_headless_on_cpu_with_a_warm_worker_and_a_reroll_without_reloading(headless):
    execute, data_dir = headless
    nb = execute(PRESET=TINY, INSTALL_FROM="already installed", STORY="walk | run", SEED=3, REROLL=True,
                 LOOP=True, COLOR_MATCH="anchor (later segments keep the photo's colours)")
    assert "error" not in nb.metadata, nb.metadata.get("error")

    story_cell, reroll_cell = cell_titled(nb, "3. Your story"), cell_titled(nb, "Re-roll")
    text = stream_text(story_cell)
    assert "segment 1/2:" in text and "segment 2/2:" in text, text
    assert videos_shown(story_cell) == 3, "each segment, then the stitched story, is shown inline"
    finals = [Path(re.search(r"^story: (.+)$", stream_text(c), re.M)[1].strip()) for c in (story_cell, reroll_cell)]
    assert videos_shown(reroll_cell) == 3 and finals[0] != finals[1]
    for final in finals:
        assert final.is_file() and final.is_relative_to(data_dir)
        frames, _ = imageio_ffmpeg.count_frames_and_secs(str(final))
        assert frames == 13 + (13 - 5) - 4  # tiny's 13 frames; the loop drops the 4 that repeat the first frame
    # One warm worker ran both stories: the models were loaded once, not once per story.
    log = (data_dir / "worker.log").read_text()
    assert log.count("loading preset") == 1, log
    assert "svibot worker" in stream_text(cell_titled(nb, "Start the warm worker"))

    everything = "\n".join(stream_text(c) for c in nb.cells if c.cell_type == "code")
    assert "GPU: none" in everything and "`tiny` was chosen" in everything
    assert "-> tiny" in everything  # the size table marks the chosen preset
    assert "bot: off" in everything and "worker left running" in everything
    install = cell_titled(nb, "Install svibot")
    assert any("image/jpeg" in out.get("data", {}) for out in install.outputs)  # the packaged sample photo
    assert "svibot 0.1.0" in stream_text(install)


def test_placeholder_repository_url_stops_at_once_with_a_clear_message(headless):
    execute, data_dir = headless
    nb = execute(PRESET=TINY)  # INSTALL_FROM stays "repository URL" with the placeholder
    assert "REPO_URL still holds the placeholder https://github.com/<owner>/svibot" in nb.metadata["error"]
    assert not cell_titled(nb, "Runtime check").get("outputs")  # nothing after the inputs ran


def test_cpu_runtime_stops_at_the_runtime_check_unless_tiny_is_chosen(headless):
    if shutil.which("nvidia-smi"):
        pytest.skip("this machine has a GPU")
    execute, data_dir = headless
    nb = execute(INSTALL_FROM="already installed")  # the default preset, auto
    assert "This runtime has no GPU, and the auto preset needs one" in nb.metadata["error"]
    for later in ("Install svibot", "Download the models", "Start the warm worker", "3. Your story"):
        assert not cell_titled(nb, later).get("outputs"), later
    assert not (data_dir / "worker.pid").exists()
