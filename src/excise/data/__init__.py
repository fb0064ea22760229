"""Records and their files (``records``, ``files``, ``encode``), tasks (``task``, ``tasks``), the
use cases' data (``usecases``), benchmark loaders (``benchmarks``) and the built-in data (``builtin/``)."""
