"""The chat adapters: the Telegram and Discord bots, and the platform-neutral intake, access checks and
outbox delivery they share. They talk to the engine only through `storage`.
"""
