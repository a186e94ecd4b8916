"""``karl-eval``: the paper's evaluation protocol, and single-pass vs search on the same model.

    karl-eval --checkpoint DIR_OR_PTH --data PATH_OR_HF_NAME --out RESULTS_DIR \
        [--fixed 32,64,128,256] [--epsilon 0.03,0.05,0.09] [--max-images N]

Regimes (each a set of per-image rows in ``per_image.csv``):

- ``fixed`` (paper Table 1): every image with exactly k tokens (``model.reconstruct``).
- ``variable`` (paper Table 2): every image at epsilon, one encoder + one decoder pass.
- ``prefix_linear`` / ``prefix_binary`` / ``iterative``: the search baselines of
  :mod:`karl.search`, same target (L1 <= epsilon), same model.

Outputs in ``--out``: ``per_image.csv`` (appended after every batch; a rerun skips rows
already there), ``summary.json``, ``results.md`` (tables laid out like the paper's),
``examples/`` (input crops next to their reconstructions) and ``run.json`` (what produced
the rows; a rerun with a different model or protocol refuses to mix results).

Under ``torchrun`` the images are sharded by rank (image i goes to rank i % world); each rank
writes ``parts/per_image.rank<r>.csv`` and rank 0 merges them after a gloo barrier.
Protocol and metric definitions: docs/EVALUATION.md.

Modules: :mod:`~karl.eval.regimes` (Task, Plan, the fixed/variable regimes),
:mod:`~karl.eval.sources` (--data), :mod:`~karl.eval.results` (CSV append, resume, merge,
fingerprint), :mod:`~karl.eval.runner` (Context, one rank's batches),
:mod:`~karl.eval.summary` (statistics, markdown tables), :mod:`~karl.eval.rfid`,
:mod:`~karl.eval.cli` (arguments, the run, ``main``).
"""

from karl.eval.cli import build_parser, load_model, main, make_plan, run
from karl.eval.regimes import (DEFAULT_EPSILONS, SEARCHES, EvalError, Plan, Task, default_fixed_counts,
                               evaluate_fixed, evaluate_variable, fmt_eps, run_task, timed)
from karl.eval.results import CSV_FIELDS, FINGERPRINT_KEYS, merge_results
from karl.eval.rfid import RfidCollector, compute_rfid, load_rfid_features
from karl.eval.runner import Context, evaluate_batch, evaluate_shard, log, warm_up
from karl.eval.sources import ImageSource, open_source
from karl.eval.summary import HALT_MARGINS, ORACLE_ORDER, halting_accuracy, markdown_tables, summarize
from karl.search import search_iterative, search_prefix_binary, search_prefix_linear

__all__ = ["main", "evaluate_fixed", "evaluate_variable", "halting_accuracy", "search_prefix_linear",
           "search_prefix_binary", "search_iterative", "summarize", "markdown_tables", "Task",
           "EvalError", "open_source", "load_model", "default_fixed_counts", "build_parser", "run",
           "make_plan", "Plan", "Context", "ImageSource", "merge_results", "compute_rfid",
           "load_rfid_features", "RfidCollector", "evaluate_batch", "evaluate_shard", "warm_up", "log",
           "fmt_eps", "run_task", "timed", "CSV_FIELDS", "FINGERPRINT_KEYS", "SEARCHES",
           "DEFAULT_EPSILONS", "HALT_MARGINS", "ORACLE_ORDER"]
