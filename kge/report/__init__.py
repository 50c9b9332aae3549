"""What a user reads about a run: figures, status of a running workflow, resuming it, benchmarks."""
