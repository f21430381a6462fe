"""Tasks: templates over data files, objectives for zeroth-order training, and evaluation.

* :func:`get_task` - a built-in task (``sentiment``, ``social_iqa``, ``strategyqa``,
  ``disfl_qa``; small BIG-bench subsets shipped in ``tasks/builtin/``), a task YAML,
  or a JSONL/CSV/parquet file with a template.
* :func:`make_objective` - a batch of examples to a scalar loss (``ce``, ``accuracy``, ``f1``).
* :func:`evaluate` - accuracy, or F1 and exact match for QA.
"""

from .evaluate import evaluate
from .objectives import OBJECTIVES, Batch, Objective, make_objective
from .task import KINDS, Task, TaskSpec, Template, builtin_names, get_task, per_class

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
]
