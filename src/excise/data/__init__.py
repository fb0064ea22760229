"""Records, loaders and tasks."""

from excise.data.records import MC, QA, Record, Text, load_records
from excise.data.tasks import BUILTIN_TASKS, Task, custom_task, load_task

__all__ = [
    "MC",
    "QA",
    "Record",
    "Text",
    "Task",
    "BUILTIN_TASKS",
    "custom_task",
    "load_records",
    "load_task",
]
