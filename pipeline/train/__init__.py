"""Training: torchrun + DeepSpeed (ZeRO 0-3) over packed shards, with exact resume and milestone exports."""
