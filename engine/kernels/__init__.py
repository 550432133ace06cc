"""Kernels the engine chooses per device: the attention backend by a start-up self-test, FP8 linears,
regional compilation of the repeated transformer block.
"""
