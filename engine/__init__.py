"""The engine: SVI 2.0 Pro story generation on Wan 2.2 I2V A14B (`svi.py`), and the worker that joins it to
the queue (`worker.py`). Model files live in `engine.models`, memory placement in `engine.memory`.
Importing the package is cheap; torch and diffusers load only when a submodule needs them.
"""
