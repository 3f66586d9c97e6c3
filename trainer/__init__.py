"""The weak-to-strong ML core: datasets and splits (``data``), backbones (``models``),
cached frozen features (``features``), the built-in method library (``methods``),
PGR arithmetic (``w2s``), the sandbox for untrusted methods (``sandbox``), glue for
trusted callers (``pipeline``), the GPU fine-tuning regime (``finetune``) and the
baseline table (``report``).

Importing ``trainer`` imports nothing heavy; import the submodule you need.
"""
