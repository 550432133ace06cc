"""svibot engine: SVI 2.0 Pro story generation on Wan 2.2 I2V A14B.

Importing the package is cheap; torch and diffusers load only when a submodule needs them.
"""
