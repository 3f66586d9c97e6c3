"""Trainer workers: run requested experiments (built-in methods in-process, agent
code in the bubblewrap sandbox) and publish their results."""
