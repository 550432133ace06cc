"""svibot, the app: the `svibot` command, its configuration from flags and environment, and the wiring
of the chat bots, the queue and the engine. The only package that imports both `bot` and `engine`.
"""

__version__ = "0.1.0"  # the one place the version is written; pyproject.toml reads it from here
