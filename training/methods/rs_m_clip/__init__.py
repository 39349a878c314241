"""RS-M-CLIP (Paper B): multilingual CLIP fine-tuning with DINO-style self-distillation."""
