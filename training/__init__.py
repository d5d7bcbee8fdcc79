"""Token data, activation buffers, losses, the trainer, distributed runs."""
