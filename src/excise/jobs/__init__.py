"""Jobs: what each command does, as data and one function.

A job is a dataclass of typed fields with defaults, checked when it is built (an unknown method,
option or attack, a value out of range: a one-line :class:`~excise.errors.ExciseError`); the
command line, YAML recipes (:mod:`excise.jobs.recipe`) and the Python API (:mod:`excise.api`)
all build the same ones. Each kind's module has ``run(job)``, which checks the output and inputs
before anything loads, does the work, writes ``job.out`` whole or not at all (nothing when it is
None) and returns a result with the model and the report.

Kinds: :mod:`~excise.jobs.unlearn`, :mod:`~excise.jobs.audit`, :mod:`~excise.jobs.evaluate`,
:mod:`~excise.jobs.edit`, :mod:`~excise.jobs.delta` (apply/revert deltas, key statistics),
:mod:`~excise.jobs.erase`, :mod:`~excise.jobs.bypass`; :mod:`~excise.jobs.usecases` the demos.
Shared: :mod:`~excise.jobs.common` (loading, tasks, evaluation), :mod:`~excise.jobs.checks`
(data checks), :mod:`~excise.jobs.places` (output, checkpoints, logs),
:mod:`~excise.jobs.training` (a method applied in memory), :mod:`~excise.jobs.fictitious`
(the taught and gold models of taught tasks), :mod:`~excise.jobs.catalog` (what
``excise tasks`` lists). Nothing is imported here: a command pays only for
the job it runs.
"""
