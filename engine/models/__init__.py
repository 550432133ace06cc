"""The model files and how they load: presets, downloads, GGUF experts, the VAE file, the text encoder and
its cache, LoRAs, the random-weight `tiny` preset, and placing the loaded models by a memory plan.
"""
