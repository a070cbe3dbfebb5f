"""Looking inside trained models: attention maps and their statistics."""
