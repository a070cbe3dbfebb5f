"""Making trained models smaller and faster: quantization, pruning, distillation, and the
efficiency report that compares the results."""
