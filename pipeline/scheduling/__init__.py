"""The frame scheduler: holds the latency target by moving along a quality ladder.

- `ladder`: what each rung does (`QualitySettings`); the vocabulary every stage reads, so it
  imports nothing from the pipeline and sits below the stages.
- `controller`: the decision, from measured latency and queue ages to at most one rung change.
- `runner`: what runs the controller inside a run and applies its rungs to stages, sink and source.

This package's `__init__` imports nothing, so a stage can read the ladder without the runner.
"""
