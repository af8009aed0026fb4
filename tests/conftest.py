"""Shared test set-up. RWKV_V7_ON must be set before the official `rwkv` package is imported."""

import os

os.environ.setdefault("RWKV_V7_ON", "1")
os.environ.setdefault("RWKV_CUDA_ON", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
