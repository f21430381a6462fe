"""Tasks: templates over data files, objectives for zeroth-order training, and evaluation.

* :func:`get_task` - a built-in task (``sentiment``, ``social_iqa``, ``strategyqa``,
  ``disfl_qa``; small BIG-bench subsets shipped in ``tasks/builtin/``), a task YAML,
  a JSONL/CSV/parquet file, a dataset directory or a ``datasets`` name, with a template;
  :func:`task_for_run` - the task a run's config describes, with the splits it uses.
* :func:`make_objective` - a batch of examples to a scalar loss (``ce``, ``accuracy``, ``f1``).
* :func:`evaluate` - accuracy, or F1 and exact match for QA.
"""

from .evaluate import evaluate
from .load import builtin_names, get_task, task_for_run
from .objectives import OBJECTIVES, Batch, Objective
from .pick import make_objective
from .task import KINDS, Task, TaskSpec, Template, per_class

__all__ = [
           "KINDS",
           "OBJECTIVES",
           "Batch",
           "Objective",
           "Task",
           "TaskSpec",
           "Template",
           "builtin_names",
           "evaluate",
           "get_task",
           "make_objective",
           "per_class",
           "task_for_run",
]
