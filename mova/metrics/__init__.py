"""Evaluation metrics: exact-match VQA accuracy per question type, for closed-vocabulary answers.

Kept apart from the model code so that training loops, the quickstart demo and the ``eval/`` entries
score predictions the same way.
"""
