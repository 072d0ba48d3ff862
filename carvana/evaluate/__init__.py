"""Stage 5, evaluation: finished run folders in, the numbers that decide what to submit out.

In: run folders with ``fold_score.json`` and ``oof_score.json`` and their out-of-fold maps. Out: the
cross-validation table (``cv_report``: ``cv_report.md``, ``.csv``, ``.png`` and a W&B ``cv`` run) and the
second level measured against the plain mean of its sources (``second_level``); leaderboard scores
recorded beside the CV (``leaderboard``); the K lowest-Dice images of a prediction folder drawn over their
photos and listed with their cars (``gallery``: ``<run>/oof_worst/``, ``<run>/oof_worst.png``).
"""
