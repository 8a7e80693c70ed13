"""Chatterbox Turbo on a GPU (or slowly on a CPU): loading, T3 runner, S3Gen streamer, scheduler.

Import cost is deferred: nothing here imports torch until an engine is built.
"""
