"""Small helpers below every layer: seconds, background threads and tasks, the test-mode flag."""
