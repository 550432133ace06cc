"""Where the weights live: the memory planner (VRAM, pinned RAM or the mapped file, per block), the block
streamer, and host-memory helpers for mapped GGUF files.
"""
