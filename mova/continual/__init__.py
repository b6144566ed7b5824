"""Continual learning over a sequence of text tasks (TRACE): the loop, its strategies, scores and RCL.

* :mod:`~mova.continual.config` -- the typed ``ContinualConfig`` behind ``mova train continual``;
* :mod:`~mova.continual.scores` -- OP, BWT and FWT of a score matrix ``R[t][i]``;
* :mod:`~mova.continual.evaluate` -- scoring a model on a task's split (batched generation + metric);
* :mod:`~mova.continual.strategies` -- the registry of training strategies (seqft, lora, replay, ewc, rcl);
* :mod:`~mova.continual.rcl` -- teacher reasoning paths: prompts, resumable batched generation, filtering;
* :mod:`~mova.continual.loop` -- train task 1..T in order, checkpoint, evaluate, resume after a kill;
* :mod:`~mova.continual.report` -- JSON, a markdown table and a heatmap of R.
"""
