"""peftserve: LoRA fine-tuning and serving on one shared quantized base."""
